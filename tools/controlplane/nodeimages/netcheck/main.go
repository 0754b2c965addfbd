// Command netcheck is the data-plane tests' workload (tests/cluster/test_data_node.py):
//
//	netcheck serve PORT      answer GET / with "netcheck <hostname>"
//	netcheck get URL         print the HTTP status of GET URL; exit 1 if it fails or is not 200
//	netcheck resolve NAME    print the addresses NAME resolves to; exit 1 if it does not resolve
package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"time"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: netcheck serve PORT | get URL | resolve NAME")
		os.Exit(2)
	}
	arg := os.Args[2]
	switch os.Args[1] {
	case "serve":
		host, _ := os.Hostname()
		http.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintf(w, "netcheck %s\n", host) })
		fmt.Println("serving on :" + arg)
		if err := http.ListenAndServe(":"+arg, nil); err != nil {
			fmt.Fprintln(os.Stderr, "error:", err)
			os.Exit(1)
		}
	case "get":
		client := http.Client{Timeout: 10 * time.Second}
		resp, err := client.Get(arg)
		if err != nil {
			fmt.Fprintln(os.Stderr, "error:", err)
			os.Exit(1)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		fmt.Printf("%s %s", resp.Status, body)
		if resp.StatusCode != http.StatusOK {
			os.Exit(1)
		}
	case "resolve":
		addrs, err := net.LookupHost(arg)
		if err != nil {
			fmt.Fprintln(os.Stderr, "error:", err)
			os.Exit(1)
		}
		fmt.Println(arg, addrs)
	default:
		fmt.Fprintln(os.Stderr, "usage: netcheck serve PORT | get URL | resolve NAME")
		os.Exit(2)
	}
}
