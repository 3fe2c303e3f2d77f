package testenv

import (
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Postgres is a private PostgreSQL cluster (Debian's postgresql, v15) for one test: its own data dir, port and
// socket dir, run as the postgres user when the test runs as root (initdb refuses root).
type Postgres struct {
	Port    int
	Socket  string // the socket dir
	dir     string
	binDir  string
	asUser  []string // "runuser -u postgres --" when root
	logFile string
	t       testing.TB
}

// pgBinDir finds the server binaries of Debian's postgresql package (not on PATH).
func pgBinDir() (string, error) {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	for i := len(dirs) - 1; i >= 0; i-- {
		if _, err := os.Stat(filepath.Join(dirs[i], "initdb")); err == nil {
			return dirs[i], nil
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		return filepath.Dir(p), nil
	}
	return "", fmt.Errorf("initdb not found under /usr/lib/postgresql/*/bin or on PATH (Debian package postgresql)")
}

// StartPostgres initialises a cluster in a temp dir, starts it on a free port of 127.0.0.1, and stops and removes
// it when the test ends.
func StartPostgres(t testing.TB) *Postgres {
	t.Helper()
	Integration(t)
	bin, err := pgBinDir()
	if err != nil {
		Missing(t, "%v", err)
	}
	dir, err := os.MkdirTemp("", "chainwarden-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	pg := &Postgres{Port: FreePort(t), Socket: filepath.Join(dir, "sock"), dir: dir, binDir: bin,
		logFile: filepath.Join(dir, "postgres.log"), t: t}
	if err := os.Mkdir(pg.Socket, 0o700); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			Missing(t, "user postgres (Debian package postgresql): %v", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		for _, p := range []string{dir, pg.Socket} {
			if err := os.Chown(p, uid, gid); err != nil {
				t.Fatal(err)
			}
		}
		pg.asUser = []string{"runuser", "-u", "postgres", "--"}
	}
	pg.run("initdb", "-D", pg.data(), "-U", "postgres", "--auth-local=trust", "--auth-host=scram-sha-256",
		"-E", "UTF8", "--locale=C")
	pg.Start()
	t.Cleanup(func() {
		_ = pg.ctl("stop", "-m", "immediate")
		if t.Failed() {
			if b, err := os.ReadFile(pg.logFile); err == nil {
				t.Logf("--- postgres log ---\n%s", tail(string(b), 30))
			}
		}
	})
	return pg
}

func (pg *Postgres) data() string { return filepath.Join(pg.dir, "data") }

func (pg *Postgres) command(name string, args ...string) *exec.Cmd {
	argv := append(append(slices.Clone(pg.asUser), filepath.Join(pg.binDir, name)), args...)
	return exec.Command(argv[0], argv[1:]...)
}

func (pg *Postgres) run(name string, args ...string) string {
	pg.t.Helper()
	out, err := pg.command(name, args...).CombinedOutput()
	if err != nil {
		pg.t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func (pg *Postgres) ctl(args ...string) error {
	args = append(args, "-D", pg.data(), "-w", "-t", "60")
	out, err := pg.command("pg_ctl", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("pg_ctl %s: %w\n%s", args[0], err, out)
	}
	return nil
}

// Start starts (or restarts) the server and waits until it accepts connections.
func (pg *Postgres) Start() {
	pg.t.Helper()
	opts := fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off", pg.Port, pg.Socket)
	if err := pg.ctl("start", "-o", opts, "-l", pg.logFile); err != nil {
		pg.t.Fatal(err)
	}
}

// Stop stops the server (fast shutdown: clients are disconnected).
func (pg *Postgres) Stop() {
	pg.t.Helper()
	if err := pg.ctl("stop", "-m", "fast"); err != nil {
		pg.t.Fatal(err)
	}
}

// SQL runs statements as the postgres superuser over the socket.
func (pg *Postgres) SQL(db, sql string) string {
	pg.t.Helper()
	return pg.run("psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", pg.Socket, "-p", strconv.Itoa(pg.Port),
		"-U", "postgres", "-d", db, "-tAc", sql)
}

// CreateDatabase makes a user with password owning a database of the same name, and returns its TCP URL.
func (pg *Postgres) CreateDatabase(name, password string) string {
	pg.t.Helper()
	pg.SQL("postgres", fmt.Sprintf("CREATE USER %s WITH PASSWORD '%s'", name, password))
	pg.SQL("postgres", fmt.Sprintf("CREATE DATABASE %s OWNER %s", name, name))
	u := url.URL{Scheme: "postgresql", User: url.UserPassword(name, password), Host: fmt.Sprintf("127.0.0.1:%d", pg.Port),
		Path: "/" + name, RawQuery: "sslmode=disable"}
	return u.String()
}

// WaitStopped waits until the server no longer accepts TCP connections.
func (pg *Postgres) WaitStopped(timeout time.Duration) {
	pg.t.Helper()
	Eventually(pg.t, timeout, "postgres to stop", func() error {
		if err := pg.command("pg_isready", "-h", "127.0.0.1", "-p", strconv.Itoa(pg.Port)).Run(); err == nil {
			return fmt.Errorf("still accepting connections")
		}
		return nil
	})
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
