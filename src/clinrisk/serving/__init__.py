"""KServe V1 serving of the model bundle (``clinrisk serve``).

Modules: ``request`` (instance schema and validation), ``inference`` (scoring engine, no KServe),
``predictor`` (the ``kserve.Model``), ``server`` (``kserve.ModelServer`` start-up, error contract),
``metrics`` (Prometheus), ``client`` (httpx client, example requests). Importing this package is light;
KServe is imported by ``predictor``/``server`` only.
"""
