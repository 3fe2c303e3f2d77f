package main

import (
	"errors"
	"strings"
	"testing"
)

// failingWriter fails every write after the first n bytes.
type failingWriter struct {
	strings.Builder
	room int
}

func (w *failingWriter) Write(p []byte) (int, error) {
	if len(p) > w.room {
		return 0, errors.New("write |1: broken pipe")
	}
	w.room -= len(p)
	return w.Builder.Write(p)
}

func TestConsoleTurnsOffOnAWriteError(t *testing.T) {
	w := &failingWriter{room: 6}
	c := newConsole(w)
	for _, s := range []string{"first\n", "second\n", "x"} {
		if n, err := c.Write([]byte(s)); n != len(s) || err != nil {
			t.Fatalf("Write(%q) = %d, %v; want %d, nil", s, n, err, len(s))
		}
	}
	if got := w.String(); got != "first\n" {
		t.Errorf("written %q; want only what came before the failed write", got)
	}
}

func TestTeardownRunsStepsLastFirst(t *testing.T) {
	td := newTeardown(&strings.Builder{})
	var order []int
	for i := range 3 {
		td.add(func() { order = append(order, i) })
	}
	td.run()
	td.run() // nothing left
	if len(order) != 3 || order[0] != 2 || order[1] != 1 || order[2] != 0 {
		t.Errorf("steps ran in order %v; want [2 1 0]", order)
	}
}
