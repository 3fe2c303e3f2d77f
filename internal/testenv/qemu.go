package testenv

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// VMConfig is a virtual machine booted by qemu straight from a kernel and initramfs (no bootloader), the way a
// test boots a disk image it built.
type VMConfig struct {
	Name           string
	Kernel, Initrd string
	// Cmdline is appended to the kernel command line after the console and debug shell settings.
	Cmdline string
	// Root is the root disk (qcow2), the guest's /dev/vda.
	Root   string
	CPUs   int // default 2
	Memory int // MiB, default 2048
	// Netns and Tap: the NIC (virtio-net, MAC) is the tap device Tap in the namespace, where qemu runs.
	Netns *Netns
	Tap   string
	MAC   string
	// NVMe are disks present at power-on (hot-plugged ones come with HotplugNVMe).
	NVMe []NVMeDisk
	// Accel is kvm or tcg (software emulation); "" asks VMAccel.
	Accel string
}

// NVMeDisk is a raw disk image on an NVMe controller with the given serial, as an EBS volume shows up on a Nitro
// instance with its volume id as the serial ("vol0123..."). (The model number, "Amazon Elastic Block Store" on EC2,
// cannot be set in Debian 12's QEMU 7.2: it reads "QEMU NVMe Ctrl".)
type NVMeDisk struct {
	ID, File, Serial string
}

func (d NVMeDisk) props() string { return "nvme,id=" + d.ID + ",drive=" + d.ID + ",serial=" + d.Serial }

// VM is a running qemu virtual machine. The first serial port (ttyS0) is the console, written to ConsoleLog; the
// second (ttyS1) carries systemd's debug shell, a root shell asked for on the kernel command line
// (systemd.debug_shell=ttyS1) and nothing the image holds: Run executes commands there, as an operator would on
// the instance's serial console. QMP (the machine protocol) hot-plugs disks and stops the machine.
type VM struct {
	Name       string
	ConsoleLog string
	Started    time.Time

	dir   string
	proc  *Process
	shell *serialShell
	qmpMu sync.Mutex
	qmp   *qmpConn
}

// StartVM boots a machine; it is stopped (QMP quit, then killed) when the test ends.
func StartVM(t testing.TB, cfg VMConfig) *VM {
	t.Helper()
	qemu := Bin(t, "qemu-system-x86_64")
	if cfg.CPUs == 0 {
		cfg.CPUs = 2
	}
	if cfg.Memory == 0 {
		cfg.Memory = 2048
	}
	if cfg.Accel == "" {
		cfg.Accel = VMAccel(t, cfg.Kernel)
	}
	dir, err := os.MkdirTemp("", "cw-vm-") // short: unix socket paths have a 108-byte limit
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	vm := &VM{Name: cfg.Name, ConsoleLog: filepath.Join(dir, "console.log"), dir: dir}
	cpu := "max"
	if cfg.Accel == "kvm" {
		cpu = "host"
	}
	args := []string{
		"-name", cfg.Name, "-machine", "pc,accel=" + cfg.Accel, "-cpu", cpu,
		"-smp", strconv.Itoa(cfg.CPUs), "-m", strconv.Itoa(cfg.Memory),
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot", "-rtc", "base=utc",
		"-kernel", cfg.Kernel, "-initrd", cfg.Initrd,
		"-append", "console=ttyS0,115200 systemd.debug_shell=ttyS1 " + cfg.Cmdline,
		// cache=unsafe: the root disk is a throw-away overlay; flushes cost much under emulation.
		"-drive", "file=" + cfg.Root + ",if=none,id=root,format=qcow2,cache=unsafe,discard=unmap",
		"-device", "virtio-blk-pci,drive=root",
		"-object", "rng-random,filename=/dev/urandom,id=rng0", "-device", "virtio-rng-pci,rng=rng0",
		"-serial", "file:" + vm.ConsoleLog,
		"-chardev", "socket,id=shell,path=" + filepath.Join(dir, "shell.sock") + ",server=on,wait=off",
		"-serial", "chardev:shell",
		"-qmp", "unix:" + filepath.Join(dir, "qmp.sock") + ",server=on,wait=off",
	}
	if cfg.Tap != "" {
		args = append(args, "-netdev", "tap,id=net0,ifname="+cfg.Tap+",script=no,downscript=no",
			"-device", "virtio-net-pci,netdev=net0,romfile=,mac="+cfg.MAC) // no boot ROM: no PXE, no ipxe package
	}
	for _, d := range cfg.NVMe {
		args = append(args, "-drive", "file="+d.File+",if=none,id="+d.ID+",format=raw", "-device", d.props())
	}
	vm.Started = time.Now()
	if cfg.Netns != nil {
		vm.proc = cfg.Netns.Start(t, "qemu-"+cfg.Name, qemu, args...)
	} else {
		vm.proc = Start(t, "qemu-"+cfg.Name, qemu, args...)
	}
	t.Cleanup(func() {
		if !vm.proc.Exited() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_, _ = vm.QMP(ctx, "quit", nil)
		}
		vm.close()
		if t.Failed() {
			t.Logf("--- %s console (last 60 lines) ---\n%s", cfg.Name, vm.ConsoleTail(60))
		}
	})
	t.Logf("%s: qemu (%s, %d vCPUs, %d MiB) started; console %s", cfg.Name, cfg.Accel, cfg.CPUs, cfg.Memory, vm.ConsoleLog)
	return vm
}

func (vm *VM) close() {
	if vm.shell != nil {
		vm.shell.conn.Close()
		vm.shell = nil
	}
	vm.qmpMu.Lock()
	if vm.qmp != nil {
		vm.qmp.conn.Close()
		vm.qmp = nil
	}
	vm.qmpMu.Unlock()
}

// Exited reports whether qemu has ended (the guest powered off: -no-reboot makes a reboot end it too).
func (vm *VM) Exited() bool { return vm.proc.Exited() }

// Done is closed when qemu ends.
func (vm *VM) Done() <-chan struct{} { return vm.proc.Done() }

// Console returns the console output so far.
func (vm *VM) Console() string {
	b, _ := os.ReadFile(vm.ConsoleLog)
	return string(b)
}

// ConsoleTail returns the last n lines of the console.
func (vm *VM) ConsoleTail(n int) string { return tailLines(vm.Console(), n) }

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// WaitShell waits until the guest's debug shell answers (it starts early in the boot, before the root file system
// is writable).
func (vm *VM) WaitShell(ctx context.Context) error {
	for {
		if vm.Exited() {
			return fmt.Errorf("%s: qemu exited before its shell answered:\n%s\n%s", vm.Name, vm.proc.Tail(20), vm.ConsoleTail(30))
		}
		if vm.shell == nil {
			c, err := net.Dial("unix", filepath.Join(vm.dir, "shell.sock"))
			if err == nil {
				vm.shell = newSerialShell(c, filepath.Join(vm.dir, "shell.log"))
			}
		}
		if vm.shell != nil {
			// Bytes sent before the guest opened the port are partly lost (the UART's FIFO is cleared when the
			// shell opens it): what reaches the shell may be half a line with an open quote, which would swallow
			// every later line. Ctrl-C makes the shell drop any pending input first.
			if _, err := vm.shell.conn.Write([]byte("\x03\n")); err != nil {
				vm.shell.conn.Close()
				vm.shell = nil
				continue
			}
			pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			out, code, err := vm.shell.run(pctx, "echo ready")
			cancel()
			if err == nil && code == 0 && strings.TrimSpace(out) == "ready" {
				// An interactive bash expands "!" in what it reads before running it: off (in the shell itself,
				// not in run's subshell), so command lines are taken as written.
				_, err := vm.shell.conn.Write([]byte("set +H\n"))
				return err
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: no answer from the debug shell on ttyS1: %w\n%s", vm.Name, ctx.Err(), vm.ConsoleTail(30))
		case <-time.After(time.Second):
		}
	}
}

// Run runs a shell command line as root in the guest (stdin /dev/null, stderr merged, no pager) and returns its
// output and exit status. WaitShell must have succeeded.
func (vm *VM) Run(ctx context.Context, cmd string) (string, int, error) {
	if vm.shell == nil {
		return "", -1, errors.New("the guest's shell is not connected (WaitShell first)")
	}
	return vm.shell.run(ctx, cmd)
}

// Must is Run with a 5-minute deadline that fails t (the test or subtest calling it) unless the command exits 0.
func (vm *VM) Must(t testing.TB, cmd string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, code, err := vm.Run(ctx, cmd)
	if err != nil || code != 0 {
		t.Fatalf("%s: %s: exit %d, %v\n%s", vm.Name, cmd, code, err, out)
	}
	return out
}

// Send types a command line into the guest's shell without waiting for it (for poweroff, which ends the shell).
func (vm *VM) Send(cmd string) error {
	if vm.shell == nil {
		return errors.New("the guest's shell is not connected")
	}
	_, err := vm.shell.conn.Write([]byte(cmd + "\n"))
	return err
}

// serialShell runs commands in a shell on a serial line. Each command's output is framed by markers the shell
// prints (built at run time, so the tty's echo of the command line never matches them).
type serialShell struct {
	conn  net.Conn
	mu    sync.Mutex // one command at a time
	n     int
	lines chan string
}

func newSerialShell(c net.Conn, transcript string) *serialShell {
	s := &serialShell{conn: c, lines: make(chan string, 4096)}
	log, _ := os.Create(transcript)
	go func() {
		defer close(s.lines)
		r := bufio.NewReader(c)
		for {
			line, err := r.ReadString('\n')
			if log != nil {
				log.WriteString(line)
			}
			if err != nil {
				if log != nil {
					log.Close()
				}
				return
			}
			select {
			case s.lines <- strings.TrimRight(line, "\r\n"):
			default: // nobody reads: drop (output of a command nobody waits for)
			}
		}
	}()
	return s
}

func (s *serialShell) run(ctx context.Context, cmd string) (string, int, error) {
	if strings.Contains(cmd, "\n") || len(cmd) > 3000 {
		return "", -1, errors.New("one line of at most 3000 bytes (the tty's line buffer)")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.n++
	id := strconv.Itoa(s.n)
	begin, end := "__CW_BEGIN_"+id, "__CW_END_"+id+":"
	// Drain what earlier (timed-out) commands left.
	for len(s.lines) > 0 {
		<-s.lines
	}
	line := fmt.Sprintf(`printf '%%s\n' "__CW_""BEGIN_%s"; ( export SYSTEMD_PAGER= PAGER=cat SYSTEMD_COLORS=0 TERM=dumb; %s ) </dev/null 2>&1 | cat; printf '%%s%%s\n' "__CW_""END_%s:" "${PIPESTATUS[0]:-$?}"`,
		id, cmd, id)
	if _, err := s.conn.Write([]byte(line + "\n")); err != nil {
		return "", -1, err
	}
	var out []string
	started := false
	for {
		select {
		case <-ctx.Done():
			return strings.Join(out, "\n"), -1, fmt.Errorf("%q: %w", cmd, ctx.Err())
		case l, ok := <-s.lines:
			if !ok {
				return strings.Join(out, "\n"), -1, fmt.Errorf("%q: the serial line closed", cmd)
			}
			switch {
			case !started && strings.HasSuffix(l, begin):
				started = true
			case started && strings.Contains(l, end):
				i := strings.Index(l, end)
				if i > 0 {
					out = append(out, l[:i]) // output without a final newline
				}
				code, err := strconv.Atoi(strings.TrimSpace(l[i+len(end):]))
				if err != nil {
					return strings.Join(out, "\n"), -1, fmt.Errorf("%q: bad status line %q", cmd, l)
				}
				return strings.Join(out, "\n"), code, nil
			case started:
				out = append(out, l)
			}
		}
	}
}

// qmpError is an error QEMU answered (the connection is fine).
type qmpError struct{ cmd, class, desc string }

func (e *qmpError) Error() string { return "qmp " + e.cmd + ": " + e.class + ": " + e.desc }

// qmpConn is a QEMU Machine Protocol connection: JSON commands, one answer each (events are skipped).
type qmpConn struct {
	conn net.Conn
	r    *bufio.Reader
}

func (vm *VM) qmpConnect() (*qmpConn, error) {
	c, err := net.Dial("unix", filepath.Join(vm.dir, "qmp.sock"))
	if err != nil {
		return nil, err
	}
	q := &qmpConn{conn: c, r: bufio.NewReader(c)}
	if _, err := q.r.ReadBytes('\n'); err != nil { // the greeting
		c.Close()
		return nil, err
	}
	if _, err := q.exec("qmp_capabilities", nil); err != nil {
		c.Close()
		return nil, err
	}
	return q, nil
}

func (q *qmpConn) exec(cmd string, args any) (json.RawMessage, error) {
	req := map[string]any{"execute": cmd}
	if args != nil {
		req["arguments"] = args
	}
	b, _ := json.Marshal(req)
	if _, err := q.conn.Write(append(b, '\n')); err != nil {
		return nil, err
	}
	for {
		line, err := q.r.ReadBytes('\n')
		if err != nil {
			return nil, err
		}
		var resp struct {
			Return json.RawMessage `json:"return"`
			Error  *struct {
				Class, Desc string
			} `json:"error"`
		}
		if err := json.Unmarshal(line, &resp); err != nil {
			return nil, fmt.Errorf("qmp %s: %w: %s", cmd, err, line)
		}
		if resp.Error != nil {
			return nil, &qmpError{cmd, resp.Error.Class, resp.Error.Desc}
		}
		if resp.Return != nil {
			return resp.Return, nil
		}
	}
}

// QMP runs one QMP command.
func (vm *VM) QMP(ctx context.Context, cmd string, args any) (json.RawMessage, error) {
	vm.qmpMu.Lock()
	defer vm.qmpMu.Unlock()
	if vm.qmp == nil {
		q, err := vm.qmpConnect()
		if err != nil {
			return nil, fmt.Errorf("qmp: %w", err)
		}
		vm.qmp = q
	}
	if dl, ok := ctx.Deadline(); ok {
		vm.qmp.conn.SetDeadline(dl)
		defer vm.qmp.conn.SetDeadline(time.Time{})
	}
	out, err := vm.qmp.exec(cmd, args)
	var qerr *qmpError
	if err != nil && !errors.As(err, &qerr) { // the connection broke: a fresh one next time
		vm.qmp.conn.Close()
		vm.qmp = nil
	}
	return out, err
}

// HotplugNVMe attaches a disk to the running machine, as EC2 attaches a volume to a running instance: the guest
// sees a new NVMe controller appear (ACPI PCI hotplug).
func (vm *VM) HotplugNVMe(ctx context.Context, d NVMeDisk) error {
	if _, err := vm.QMP(ctx, "blockdev-add", map[string]any{
		"driver": "raw", "node-name": d.ID, "file": map[string]any{"driver": "file", "filename": d.File},
	}); err != nil {
		return err
	}
	_, err := vm.QMP(ctx, "device_add", map[string]any{"driver": "nvme", "id": d.ID, "drive": d.ID, "serial": d.Serial})
	return err
}

// WaitExit waits for qemu to end (the guest powered off), up to ctx.
func (vm *VM) WaitExit(ctx context.Context) error {
	select {
	case <-vm.proc.Done():
		vm.close()
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%s did not power off: %w\n%s", vm.Name, ctx.Err(), vm.ConsoleTail(30))
	}
}

var (
	accelMu   sync.Mutex
	accelSeen = map[string]string{}
)

// VMAccel says how to run guests here: "kvm" when /dev/kvm opens and a probe guest (the kernel, no root disk)
// boots under it to its panic within a short deadline, else "tcg" (software emulation). KVM guests have been seen
// to hang right after the kernel's decompression on this kind of machine, so KVM is only ever a detected speed-up.
// CHAINWARDEN_VM_ACCEL=tcg|kvm overrides the probe.
func VMAccel(t testing.TB, kernel string) string {
	t.Helper()
	if a := os.Getenv("CHAINWARDEN_VM_ACCEL"); a == "tcg" || a == "kvm" {
		return a
	}
	accelMu.Lock()
	defer accelMu.Unlock()
	if a, ok := accelSeen[kernel]; ok {
		return a
	}
	a, why := probeKVM(t, kernel)
	t.Logf("vm acceleration: %s (%s)", a, why)
	accelSeen[kernel] = a
	return a
}

func probeKVM(t testing.TB, kernel string) (string, string) {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return "tcg", fmt.Sprintf("no usable /dev/kvm: %v", err)
	}
	f.Close()
	qemu := Bin(t, "qemu-system-x86_64")
	log := filepath.Join(t.TempDir(), "kvm-probe.log")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, qemu, "-machine", "pc,accel=kvm", "-cpu", "host", "-m", "256", "-nodefaults",
		"-no-user-config", "-display", "none", "-no-reboot", "-kernel", kernel,
		"-append", "console=ttyS0 panic=-1", "-serial", "file:"+log)
	out, err := cmd.CombinedOutput()
	b, _ := os.ReadFile(log)
	if ctx.Err() != nil {
		return "tcg", "a KVM probe guest did not reach its kernel panic within 30s"
	}
	if !strings.Contains(string(b), "Kernel panic") {
		return "tcg", fmt.Sprintf("the KVM probe guest did not boot its kernel (%v): %s %s", err, tailLines(string(out), 3), tailLines(string(b), 3))
	}
	return "kvm", "a probe guest booted its kernel under KVM"
}
