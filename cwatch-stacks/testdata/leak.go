// A Go program that opens one TCP connection to 127.0.0.1:<argv[1]> from a
// known function, for the cwatch-stacks tests.
package main

import (
	"net"
	"os"
	"strconv"
)

var keep net.Conn

//go:noinline
func openLeakyConnection(port int) net.Conn {
	c, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(port)) // CONNECT
	if err != nil {
		os.Exit(2)
	}
	return c
}

//go:noinline
func workerHandle(port int) int {
	keep = openLeakyConnection(port)
	return 1
}

func main() {
	port, _ := strconv.Atoi(os.Args[1])
	os.Exit(workerHandle(port) - 1)
}
