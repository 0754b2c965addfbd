// Wrapper module: builds the CNI plugins the data node's containerd calls (bridge, host-local, loopback)
// from github.com/containernetworking/plugins.
module clinrisk.local/tools/controlplane/cni

go 1.24.0

require github.com/containernetworking/plugins v1.7.1 // indirect
