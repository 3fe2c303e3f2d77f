// Package browsertest drives a real headless Chromium (Debian's chromium, through playwright-core from npm) for
// tests of pages a person looks at: open a URL, wait until its visible text says what it should (clicking and
// reloading as a person would), read the text, save screenshots in a directory the test log names.
//
// `make deps` installs both: chromium with apt, playwright-core with npm into the deps cache outside the clone
// (<cache>/node/node_modules). Under -short the tests skip; with CI=true a missing browser or package fails them.
package browsertest

import (
	"bufio"
	_ "embed"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chainwarden/chainwarden/internal/testenv"
)

//go:embed driver.cjs
var driver []byte

// PlaywrightCore is where `make deps` installs playwright-core.
func PlaywrightCore() string {
	return filepath.Join(filepath.Dir(testenv.CacheBin()), "node", "node_modules", "playwright-core")
}

// Browser is one headless Chromium for one test, closed when the test ends.
type Browser struct {
	t    testing.TB
	cmd  *exec.Cmd
	in   io.WriteCloser
	out  *bufio.Reader
	dir  string // where screenshots go
	errs *strings.Builder
}

// Want is what Wait waits for.
type Want struct {
	Text   []string      // JavaScript regular expressions the page's visible text must all match
	Absent []string      // ... and none of these
	Click  []string      // Playwright selectors (e.g. `text=Details`, `tr.header:has-text("X")`) clicked after each load
	Reload bool          // reload the page between looks (for pages that don't update themselves)
	Within time.Duration // default 30s
}

type answer struct {
	OK     bool   `json:"ok"`
	Error  string `json:"error"`
	Text   string `json:"text"`
	Status int    `json:"status"`
}

// Options tune a browser.
type Options struct {
	NoScript bool // pages run with JavaScript off: for pages that must work without it
}

// Start launches Chromium with a fresh profile (the flags in REFERENCE.md: headless, no sandbox, no GPU, no QUIC,
// nothing fetched in the background) under playwright-core.
func Start(t testing.TB) *Browser {
	t.Helper()
	return StartWith(t, Options{})
}

// StartWith is Start with options.
func StartWith(t testing.TB, o Options) *Browser {
	t.Helper()
	chromium := testenv.Bin(t, "chromium")
	node := testenv.Bin(t, "node")
	pw := PlaywrightCore()
	if _, err := os.Stat(filepath.Join(pw, "package.json")); err != nil {
		testenv.Missing(t, "playwright-core not in %s (run `make deps`)", pw)
	}
	tmp := t.TempDir()
	script := filepath.Join(tmp, "driver.cjs")
	if err := os.WriteFile(script, driver, 0o644); err != nil {
		t.Fatal(err)
	}
	profile := filepath.Join(tmp, "profile")
	cmd := exec.Command(node, script)
	cmd.Env = append(os.Environ(), "CHROMIUM="+chromium, "PLAYWRIGHT_CORE="+pw, "USER_DATA_DIR="+profile)
	if o.NoScript {
		cmd.Env = append(cmd.Env, "NO_SCRIPT=1")
	}
	b := &Browser{t: t, cmd: cmd, dir: OutputDir(t), errs: &strings.Builder{}}
	cmd.Stderr = b.errs
	var err error
	if b.in, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	b.out = bufio.NewReaderSize(stdout, 1<<20)
	if err := cmd.Start(); err != nil {
		t.Fatalf("start the browser driver: %v", err)
	}
	t.Cleanup(b.close)
	if a := b.read(time.Minute); !a.OK {
		t.Fatalf("chromium did not start: %s\n%s", a.Error, b.errs)
	}
	return b
}

func (b *Browser) close() {
	b.in.Close()
	done := make(chan struct{})
	go func() { _ = b.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = b.cmd.Process.Kill()
		<-done
	}
}

// read waits for the driver's next answer.
func (b *Browser) read(timeout time.Duration) answer {
	b.t.Helper()
	type line struct {
		s   string
		err error
	}
	c := make(chan line, 1)
	go func() {
		s, err := b.out.ReadString('\n')
		c <- line{s, err}
	}()
	select {
	case l := <-c:
		var a answer
		if l.err != nil {
			b.t.Fatalf("browser driver ended: %v\n%s", l.err, b.errs)
		}
		if err := json.Unmarshal([]byte(l.s), &a); err != nil {
			b.t.Fatalf("browser driver said %q: %v", l.s, err)
		}
		return a
	case <-time.After(timeout):
		_ = b.cmd.Process.Kill()
		b.t.Fatalf("browser driver silent for %s\n%s", timeout, b.errs)
		return answer{}
	}
}

func (b *Browser) do(cmd map[string]any, timeout time.Duration) answer {
	b.t.Helper()
	line, _ := json.Marshal(cmd)
	if _, err := b.in.Write(append(line, '\n')); err != nil {
		b.t.Fatalf("browser driver: %v\n%s", err, b.errs)
	}
	return b.read(timeout)
}

// Open loads url and returns the HTTP status it answered with.
func (b *Browser) Open(url string) int {
	b.t.Helper()
	a := b.do(map[string]any{"op": "open", "url": url, "timeoutMs": 30000}, 45*time.Second)
	if !a.OK {
		b.t.Fatalf("open %s: %s", url, a.Error)
	}
	return a.Status
}

// Wait waits until the page shows what w wants and returns its visible text; it fails the test with the page's text
// and a screenshot (timeout-N.png) when it does not in time.
func (b *Browser) Wait(w Want) string {
	b.t.Helper()
	if w.Within <= 0 {
		w.Within = 30 * time.Second
	}
	for _, re := range append(append([]string{}, w.Text...), w.Absent...) {
		if _, err := regexp.Compile(re); err != nil { // the driver reads them as JavaScript ones: catch typos early
			b.t.Fatalf("pattern %q: %v", re, err)
		}
	}
	a := b.do(map[string]any{"op": "wait", "want": nonNil(w.Text), "absent": nonNil(w.Absent), "click": nonNil(w.Click),
		"reload": w.Reload, "timeoutMs": w.Within.Milliseconds()}, w.Within+time.Minute)
	if !a.OK {
		shot := b.Screenshot(fmt.Sprintf("timeout-%d.png", time.Now().UnixNano()))
		b.t.Fatalf("page did not show what was wanted: %s (screenshot %s)\n--- page text ---\n%s", a.Error, shot, a.Text)
	}
	return a.Text
}

// Text is the page's visible text now.
func (b *Browser) Text() string {
	b.t.Helper()
	a := b.do(map[string]any{"op": "text"}, 30*time.Second)
	if !a.OK {
		b.t.Fatalf("page text: %s", a.Error)
	}
	return a.Text
}

// Screenshot saves the whole page as name (a .png) in the output directory and returns its path.
func (b *Browser) Screenshot(name string) string {
	b.t.Helper()
	path := filepath.Join(b.dir, name)
	if a := b.do(map[string]any{"op": "screenshot", "path": path}, 45*time.Second); !a.OK {
		b.t.Fatalf("screenshot %s: %s", name, a.Error)
	}
	b.t.Logf("screenshot: %s", path)
	return path
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

var unsafeName = regexp.MustCompile(`[^A-Za-z0-9._-]+`)

var (
	outputMu   sync.Mutex
	outputDirs = map[testing.TB]string{}
)

// OutputDir is where a test's screenshots go, emptied first and kept after the test: t.ArtifactDir() when the test
// runs with -artifacts, else $CHAINWARDEN_TEST_OUTPUT (default $TMPDIR/chainwarden-test-output) / the test's name.
// Never inside the clone, so no screenshot is committed by accident.
func OutputDir(t testing.TB) string {
	t.Helper()
	outputMu.Lock()
	defer outputMu.Unlock()
	if dir, ok := outputDirs[t]; ok {
		return dir
	}
	dir := outputDir(t)
	outputDirs[t] = dir
	t.Cleanup(func() {
		outputMu.Lock()
		delete(outputDirs, t)
		outputMu.Unlock()
	})
	return dir
}

func outputDir(t testing.TB) string {
	t.Helper()
	if f := flag.Lookup("test.artifacts"); f != nil && f.Value.String() == "true" {
		if ad, ok := t.(interface{ ArtifactDir() string }); ok {
			return ad.ArtifactDir()
		}
	}
	root := os.Getenv("CHAINWARDEN_TEST_OUTPUT")
	if root == "" {
		root = filepath.Join(os.TempDir(), "chainwarden-test-output")
	}
	dir := filepath.Join(root, unsafeName.ReplaceAllString(t.Name(), "_"))
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Logf("test output (screenshots) in %s", dir)
	return dir
}
