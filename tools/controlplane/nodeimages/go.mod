// The two images the data node needs and no registry can serve here, built from this module's own source:
// pause (the pod sandbox, as kubernetes/build/pause) and netcheck (the data-plane tests' server and client).
module clinrisk.local/tools/controlplane/nodeimages

go 1.24.0
