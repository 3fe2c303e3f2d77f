package push

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/gorilla/websocket"
)

// An agent keeps one WebSocket per node (a thousand of them on a big host), so a subscription costs one goroutine
// (the manager's, which reads) and small buffers: no writer goroutine, a timer that pings.
const (
	// wsPing is how often a subscription pings the node; every conforming server answers with a pong.
	wsPing = 30 * time.Second
	// wsIdle is how long a subscription may go without any frame (message, ping or pong) before it is taken as dead:
	// a node that hangs (SIGSTOP), or a connection a middlebox dropped without a reset.
	wsIdle = 2*wsPing + 15*time.Second
)

// wsWritePool shares write buffers between connections: a subscription writes one request, then only pings.
var wsWritePool = &sync.Pool{}

// wsConn is one subscription's connection.
type wsConn struct {
	c       *websocket.Conn
	timeout time.Duration
	stop    func() bool // unregisters the close on ctx's end

	mu     sync.Mutex
	pinger *time.Timer
	closed bool
}

// dialWS opens a WebSocket to url under timeout. The connection closes when ctx ends (which ends a blocked read).
// Node RPC is never sent through HTTP(S)_PROXY, as for probes.
func dialWS(ctx context.Context, url string, timeout time.Duration) (*wsConn, error) {
	d := websocket.Dialer{HandshakeTimeout: timeout, ReadBufferSize: 1024, WriteBufferSize: 1024, WriteBufferPool: wsWritePool}
	dctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c, resp, err := d.DialContext(dctx, url, nil)
	if resp != nil && resp.Body != nil {
		resp.Body.Close()
	}
	if err != nil {
		if errors.Is(err, websocket.ErrBadHandshake) && resp != nil {
			return nil, fmt.Errorf("dial %s: websocket handshake refused: http %s", redactURL(url), resp.Status)
		}
		return nil, fmt.Errorf("dial %s: %w", redactURL(url), tidy(err, url))
	}
	c.SetReadLimit(MaxMessageBytes)
	w := &wsConn{c: c, timeout: timeout}
	w.stop = context.AfterFunc(ctx, func() { c.Close() })
	alive := func(string) error { return c.SetReadDeadline(time.Now().Add(wsIdle)) }
	c.SetPongHandler(alive)
	c.SetPingHandler(func(data string) error {
		_ = alive(data)
		err := c.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(timeout))
		var ne net.Error
		if err == nil || errors.Is(err, websocket.ErrCloseSent) || (errors.As(err, &ne) && ne.Timeout()) {
			return nil
		}
		return err
	})
	// Until the first answer, a read waits at most timeout.
	_ = c.SetReadDeadline(time.Now().Add(timeout))
	w.mu.Lock()
	w.pinger = time.AfterFunc(wsPing, w.ping)
	w.mu.Unlock()
	return w, nil
}

// ping sends a ping and schedules the next one; a failed write ends the pings (the read then fails too).
func (w *wsConn) ping() {
	if err := w.c.WriteControl(websocket.PingMessage, nil, time.Now().Add(w.timeout)); err != nil {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.closed {
		w.pinger.Reset(wsPing)
	}
}

// send writes one JSON-RPC request.
func (w *wsConn) send(req []byte) error {
	_ = w.c.SetWriteDeadline(time.Now().Add(w.timeout))
	return w.c.WriteMessage(websocket.TextMessage, req)
}

// next reads the next message; any frame keeps the connection alive for wsIdle more.
func (w *wsConn) next() ([]byte, error) {
	_, data, err := w.c.ReadMessage()
	if err == nil {
		_ = w.c.SetReadDeadline(time.Now().Add(wsIdle))
	}
	return data, err
}

// close ends the connection and its pings; the subscriber that dialed calls it once it is done.
func (w *wsConn) close() {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return
	}
	w.closed = true
	if w.pinger != nil {
		w.pinger.Stop()
	}
	w.mu.Unlock()
	w.stop()
	w.c.Close()
}
