package testenv

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
)

// Proc is one process as /proc shows it.
type Proc struct {
	PID, PPID, PGID int
	State           byte   // R, S, D, T, Z, ...
	Start           uint64 // start time in clock ticks after boot: with PID, it names one process, whatever PID reuse
	Cmd             string // the command line, arguments joined by spaces
}

func (p Proc) String() string { return fmt.Sprintf("%d (%s)", p.PID, p.Cmd) }

// Procs lists the processes running now (zombies included: State 'Z').
func Procs() []Proc {
	entries, _ := os.ReadDir("/proc")
	var out []Proc
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if p, ok := readProc(pid); ok {
			out = append(out, p)
		}
	}
	return out
}

func readProc(pid int) (Proc, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return Proc{}, false
	}
	// pid (comm) state ppid pgrp session tty_nr tpgid flags minflt cminflt majflt cmajflt utime stime cutime cstime
	// priority nice num_threads itrealvalue starttime ...; comm may hold spaces and parentheses.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return Proc{}, false
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 || len(f[0]) != 1 {
		return Proc{}, false
	}
	p := Proc{PID: pid, State: f[0][0]}
	p.PPID, _ = strconv.Atoi(f[1])
	p.PGID, _ = strconv.Atoi(f[2])
	p.Start, _ = strconv.ParseUint(f[19], 10, 64)
	cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	p.Cmd = strings.TrimSpace(strings.ReplaceAll(string(cmd), "\x00", " "))
	return p, true
}

// Children returns the live (not zombie) processes whose parent is pid.
func Children(pid int) []Proc {
	var out []Proc
	for _, p := range Procs() {
		if p.PPID == pid && p.State != 'Z' {
			out = append(out, p)
		}
	}
	return out
}

// Tree returns the live descendants of pid and every other live process in their process groups (but the caller's
// own group): what a program started, including what it put into process groups of their own.
func Tree(pid int) []Proc {
	all := Procs()
	in := map[int]bool{pid: true}
	groups := map[int]bool{}
	mine := syscall.Getpgrp()
	for grew := true; grew; {
		grew = false
		for _, p := range all {
			if !in[p.PID] && (in[p.PPID] || groups[p.PGID]) {
				in[p.PID], grew = true, true
				groups[p.PGID] = p.PGID != mine
			}
		}
	}
	var out []Proc
	for _, p := range all {
		if p.PID != pid && in[p.PID] && p.State != 'Z' {
			out = append(out, p)
		}
	}
	return slices.Clip(out)
}

// Alive reports whether the process still runs: the same PID and start time, and not a zombie.
func (p Proc) Alive() bool {
	now, ok := readProc(p.PID)
	return ok && now.Start == p.Start && now.State != 'Z'
}
