"""Medical image segmentation: a pixel-wise lesion mask for 2D grayscale images.

The plugin (``USECASE``) shares the platform's data stages (generate/ingest, validate with quarantine) and
brings its own model: a small UNet in JAX (``model``, ``training``), tracked in MLflow and promoted in its
registry (``tracking``), compared across iteration configs (``experiments``) and served over KServe's V1
protocol (``serving``). The pure parts: ``synth`` (generator with known masks), ``imaging`` (decode, checks,
RLE), ``schemas`` (pandera manifest), ``plugin`` (DataSource + RawSchema). See docs/usecases/segmentation.md.
"""
