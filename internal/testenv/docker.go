package testenv

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Docker is the project's own Docker engine (scripts/dockerd.sh): one per machine, shared by the tests that run at
// the same time and stopped when the last of them ends. Its images stay in the cache between runs.
type Docker struct {
	Host string // DOCKER_HOST value, unix://...
	Sock string

	cli string
}

func dockerRoot() string {
	if d := os.Getenv("DOCKERD_ROOT"); d != "" {
		return d
	}
	return filepath.Join(filepath.Dir(CacheBin()), "docker")
}

// StartDocker makes sure the project's dockerd runs (starting it with scripts/dockerd.sh if needed) and registers
// this test as a user; the engine is stopped when the last user's test ends. It needs root.
func StartDocker(t testing.TB) *Docker {
	t.Helper()
	Integration(t)
	RequireRoot(t)
	if _, err := exec.LookPath("dockerd"); err != nil {
		Missing(t, "dockerd not installed (make deps installs docker.io)")
	}
	cli, err := exec.LookPath("docker")
	if err != nil {
		Missing(t, "docker CLI not installed")
	}
	root := dockerRoot()
	users := filepath.Join(root, "users")
	if err := os.MkdirAll(users, 0o755); err != nil {
		t.Fatal(err)
	}
	me := filepath.Join(users, fmt.Sprintf("%d-%d", os.Getpid(), time.Now().UnixNano()))
	script := filepath.Join(repoRoot(), "scripts", "dockerd.sh")

	unlock := lockFile(t, filepath.Join(root, "users.lock"))
	if err := os.WriteFile(me, []byte(t.Name()), 0o644); err != nil {
		unlock()
		t.Fatal(err)
	}
	out, err := exec.Command("bash", script, "start").CombinedOutput()
	unlock()
	if err != nil {
		os.Remove(me)
		t.Fatalf("start dockerd: %v\n%s", err, out)
	}
	d := &Docker{Sock: filepath.Join(root, "docker.sock"), cli: cli}
	d.Host = "unix://" + d.Sock
	t.Cleanup(func() {
		unlock := lockFile(t, filepath.Join(root, "users.lock"))
		defer unlock()
		os.Remove(me)
		if liveUsers(users) > 0 {
			return
		}
		if out, err := exec.Command("bash", script, "stop").CombinedOutput(); err != nil {
			t.Errorf("stop dockerd: %v\n%s", err, out)
		}
	})
	return d
}

// liveUsers counts the engine's users: test files whose process still runs (a crashed test's file doesn't keep the
// engine up) and named users (the demo).
func liveUsers(dir string) int {
	entries, _ := os.ReadDir(dir)
	n := 0
	for _, e := range entries {
		pid, err := strconv.Atoi(strings.SplitN(e.Name(), "-", 2)[0])
		if err != nil || syscall.Kill(pid, 0) == nil {
			n++ // a live test, or a named user such as the demo (scripts/demo-nomad.sh)
			continue
		}
		os.Remove(filepath.Join(dir, e.Name()))
	}
	return n
}

func lockFile(t testing.TB, path string) func() {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		t.Fatal(err)
	}
	return func() {
		syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}
}

// Command returns a docker CLI command talking to this engine.
func (d *Docker) Command(args ...string) *exec.Cmd {
	cmd := exec.Command(d.cli, args...)
	cmd.Env = append(os.Environ(), "DOCKER_HOST="+d.Host)
	return cmd
}

// Run runs the docker CLI and returns its output, failing the test on error.
func (d *Docker) Run(t testing.TB, args ...string) string {
	t.Helper()
	out, err := d.Command(args...).CombinedOutput()
	if err != nil {
		t.Fatalf("docker %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Image is a file to put into a FROM-scratch image: its path in the image and the host file it comes from.
type ImageFile struct {
	Path string
	From string
}

// ImportImage builds a FROM-scratch image holding files (static binaries) with the given entrypoint, by
// `docker import` of a tarball (no registry, no base image). The tag is a hash of the content, so an unchanged
// binary reuses the image already built. It returns the image reference, e.g. local/geth:3f2a....
func (d *Docker) ImportImage(t testing.TB, name string, entrypoint []string, files ...ImageFile) string {
	t.Helper()
	h := sha256.New()
	sort.Slice(files, func(i, j int) bool { return files[i].Path < files[j].Path })
	for _, f := range files {
		src, err := os.Open(f.From)
		if err != nil {
			t.Fatalf("image %s: %v", name, err)
		}
		io.WriteString(h, f.Path)
		_, err = io.Copy(h, src)
		src.Close()
		if err != nil {
			t.Fatal(err)
		}
	}
	io.WriteString(h, strings.Join(entrypoint, "\x00"))
	ref := "local/" + name + ":" + hex.EncodeToString(h.Sum(nil))[:12]
	if d.Command("image", "inspect", ref).Run() == nil {
		return ref
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(writeImageTar(pw, files)) }()
	ep := `ENTRYPOINT ["` + strings.Join(entrypoint, `", "`) + `"]`
	cmd := d.Command("import", "-c", ep, "-", ref)
	cmd.Stdin = pr
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("docker import %s: %v\n%s", ref, err, out.String())
	}
	return ref
}

// writeImageTar writes a root filesystem: the files, their parent directories and an empty /tmp.
func writeImageTar(w io.Writer, files []ImageFile) error {
	tw := tar.NewWriter(w)
	dirs := map[string]bool{}
	mkdir := func(dir string, mode int64) error {
		if dir == "." || dir == "/" || dir == "" || dirs[dir] {
			return nil
		}
		dirs[dir] = true
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: dir + "/", Mode: mode, ModTime: time.Unix(0, 0)})
	}
	if err := mkdir("tmp", 0o1777); err != nil {
		return err
	}
	for _, f := range files {
		rel := strings.TrimPrefix(filepath.Clean(f.Path), "/")
		parts := strings.Split(filepath.Dir(rel), "/")
		for i := range parts {
			if err := mkdir(strings.Join(parts[:i+1], "/"), 0o755); err != nil {
				return err
			}
		}
		src, err := os.Open(f.From)
		if err != nil {
			return err
		}
		st, err := src.Stat()
		if err != nil {
			src.Close()
			return err
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: rel, Mode: 0o755, Size: st.Size(), ModTime: time.Unix(0, 0)}); err != nil {
			src.Close()
			return err
		}
		_, err = io.Copy(tw, src)
		src.Close()
		if err != nil {
			return err
		}
	}
	return tw.Close()
}

// GethImage is a FROM-scratch image of the static geth from the deps cache, entrypoint /usr/local/bin/geth as in
// ethereum/client-go.
func (d *Docker) GethImage(t testing.TB) string {
	t.Helper()
	bin, err := filepath.EvalSymlinks(Bin(t, "geth"))
	if err != nil {
		t.Fatal(err)
	}
	return d.ImportImage(t, "geth", []string{"/usr/local/bin/geth"}, ImageFile{Path: "/usr/local/bin/geth", From: bin})
}

// CometBFTImage is a FROM-scratch image of the static cometbft from the deps cache, at /usr/bin/cometbft as in
// cometbft/cometbft.
func (d *Docker) CometBFTImage(t testing.TB) string {
	t.Helper()
	bin, err := filepath.EvalSymlinks(Bin(t, "cometbft"))
	if err != nil {
		t.Fatal(err)
	}
	return d.ImportImage(t, "cometbft", []string{"/usr/bin/cometbft"}, ImageFile{Path: "/usr/bin/cometbft", From: bin})
}

// RemoveContainersOf force-removes the containers of the given Nomad allocations (left running when a Nomad
// agent is killed without stopping its jobs).
func (d *Docker) RemoveContainersOf(t testing.TB, allocIDs []string) {
	t.Helper()
	for _, id := range allocIDs {
		out, err := d.Command("ps", "-aq", "--filter", "label=com.hashicorp.nomad.alloc_id="+id).Output()
		if err != nil {
			continue
		}
		for _, c := range strings.Fields(string(out)) {
			if b, err := d.Command("rm", "-f", c).CombinedOutput(); err != nil {
				t.Logf("docker rm -f %s: %v %s", c, err, b)
			}
		}
	}
}

// idleSource is a program that waits for SIGTERM/SIGINT: the stand-in for images that can't be built here
// (Chainlink, IRITA), so Nomad renders a spec's templates and keeps its task running.
const idleSource = `package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGINT, syscall.SIGTERM)
	<-c
}
`

// IdleImage is a FROM-scratch image whose entrypoint, /idle, ignores its arguments and waits to be stopped.
func (d *Docker) IdleImage(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte(idleSource), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module idle\n\ngo 1.21\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("go", "build", "-trimpath", "-o", "idle", ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=-mod=mod")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build idle: %v\n%s", err, out)
	}
	return d.ImportImage(t, "idle", []string{"/idle"}, ImageFile{Path: "/idle", From: filepath.Join(dir, "idle")})
}
