// Package netnsenter runs code inside a named network namespace (`ip netns add NAME`, /run/netns/NAME) from the
// calling process: sockets made there stay in the namespace wherever they are used afterwards. Test hosts use it
// (internal/testenv's Netns, internal/cluster's fleet) to listen and dial as a host of their own.
package netnsenter

import (
	"context"
	"fmt"
	"net"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// Do runs fn on an OS thread that entered the namespace name, then takes the thread back to the namespace it came
// from before handing it back to the scheduler. Should the way back fail, the thread stays locked and ends with the
// goroutine: no other goroutine may ever run in the namespace by accident.
//
// Threads must not end needlessly: a child started with Pdeathsig is killed when the thread that forked it ends,
// and any thread may have forked one before it ran this goroutine.
func Do(name string, fn func() error) error {
	target, err := os.Open("/run/netns/" + name)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", name, err)
	}
	defer target.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		home, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("this thread's netns: %w", err)
			return
		}
		defer home.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter netns %s: %w", name, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(int(home.Fd()), unix.CLONE_NEWNET); err == nil {
			runtime.UnlockOSThread()
		}
		errc <- ferr
	}()
	return <-errc
}

// Dial dials addr from inside the namespace name.
func Dial(ctx context.Context, name, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := Do(name, func() (err error) {
		c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// Listen listens on addr inside the namespace name.
func Listen(name, network, addr string) (net.Listener, error) {
	var l net.Listener
	err := Do(name, func() (err error) {
		l, err = net.Listen(network, addr)
		return err
	})
	return l, err
}
