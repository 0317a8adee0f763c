package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// binaries are the two server executables, built once per run.
type binaries struct {
	dir   string
	ferry string
	nats  string
}

// moduleRoot is the directory of this module (bench/compare), found from
// the working directory: the repo root or bench/compare itself.
func moduleRoot() (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for _, d := range []string{wd, filepath.Join(wd, "bench", "compare")} {
		b, err := os.ReadFile(filepath.Join(d, "go.mod"))
		if err == nil && strings.Contains(string(b), "module github.com/ferrymq/ferry/bench/compare") {
			return d, nil
		}
	}
	return "", fmt.Errorf("run from the repo root or from bench/compare (working directory %s)", wd)
}

func buildBinaries(tmp string) (*binaries, error) {
	mod, err := moduleRoot()
	if err != nil {
		return nil, err
	}
	b := &binaries{dir: tmp, ferry: filepath.Join(tmp, "ferry"), nats: filepath.Join(tmp, "nats-server")}
	build := func(dir, out, pkg string) error {
		cmd := exec.Command("go", "build", "-o", out, pkg)
		cmd.Dir = dir
		cmd.Stderr = os.Stderr
		cmd.Stdout = os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("go build %s: %w", pkg, err)
		}
		return nil
	}
	if err := build(filepath.Join(mod, "..", ".."), b.ferry, "github.com/ferrymq/ferry/cmd/ferry"); err != nil {
		return nil, err
	}
	if err := build(mod, b.nats, "github.com/nats-io/nats-server/v2"); err != nil {
		return nil, err
	}
	return b, nil
}

// server is one broker process with its own data directory.
type server struct {
	name    string
	cmd     *exec.Cmd
	dir     string // temp dir: data, config, log
	addr    string
	log     string
	pidFile string // when set, the pid of the server proper (RabbitMQ's beam, not its start script)

	exited chan struct{}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// startFerry starts `ferry serve` with data in dir/data.
func startFerry(bin, dir, fsync string) (*server, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	return start("ferry", dir, addr, bin, "serve", "--data-dir", filepath.Join(dir, "data"),
		"--grpc-addr", addr, "--http-addr", "", "--fsync", fsync, "--log-level", "warn")
}

// startNats starts nats-server with JetStream file storage in dir/data;
// syncAlways sets sync_interval: always, otherwise the default applies.
func startNats(bin, dir string, syncAlways bool) (*server, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	sync := ""
	if syncAlways {
		sync = "\n  sync_interval: always"
	}
	conf := fmt.Sprintf("listen: \"127.0.0.1:%d\"\njetstream {\n  store_dir: %q%s\n}\n", port, filepath.Join(dir, "data"), sync)
	cf := filepath.Join(dir, "nats.conf")
	if err := os.WriteFile(cf, []byte(conf), 0o644); err != nil {
		return nil, err
	}
	return start("jetstream", dir, fmt.Sprintf("127.0.0.1:%d", port), bin, "-c", cf)
}

// rabbitServer is Debian's RabbitMQ start script, when rabbitmq-server is
// installed; /usr/sbin/rabbitmq-server would switch to the rabbitmq user,
// who cannot write our temp dir.
const rabbitServer = "/usr/lib/rabbitmq/bin/rabbitmq-server"

func haveRabbit() bool {
	_, err := os.Stat(rabbitServer)
	return err == nil
}

// startRabbit starts a RabbitMQ node of its own (own node name, ports, data
// and log dirs under dir, no plugins) on loopback.
func startRabbit(dir string) (*server, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	dist, err := freePort()
	if err != nil {
		return nil, err
	}
	plugins := filepath.Join(dir, "enabled_plugins")
	if err := os.WriteFile(plugins, []byte("[].\n"), 0o644); err != nil {
		return nil, err
	}
	pidFile := filepath.Join(dir, "rabbit.pid")
	env := []string{
		"HOME=" + dir, // the Erlang cookie
		// One node name per data dir, so that a restart finds its data.
		"RABBITMQ_NODENAME=" + filepath.Base(dir) + "@localhost",
		"RABBITMQ_NODE_IP_ADDRESS=127.0.0.1",
		"RABBITMQ_NODE_PORT=" + strconv.Itoa(port),
		"RABBITMQ_DIST_PORT=" + strconv.Itoa(dist),
		"RABBITMQ_MNESIA_BASE=" + filepath.Join(dir, "data"),
		"RABBITMQ_LOG_BASE=" + filepath.Join(dir, "log"),
		"RABBITMQ_LOGS=-",
		"RABBITMQ_ENABLED_PLUGINS_FILE=" + plugins,
		"RABBITMQ_PID_FILE=" + pidFile,
	}
	s, err := startEnv("rabbitmq", dir, fmt.Sprintf("127.0.0.1:%d", port), env, rabbitServer)
	if err != nil {
		return nil, err
	}
	s.pidFile = pidFile
	return s, nil
}

func start(name, dir, addr, bin string, args ...string) (*server, error) {
	return startEnv(name, dir, addr, nil, bin, args...)
}

func startEnv(name, dir, addr string, env []string, bin string, args ...string) (*server, error) {
	logPath := filepath.Join(dir, name+".log")
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer lf.Close()
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.Env = append(os.Environ(), env...)
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	s := &server{name: name, cmd: cmd, dir: dir, addr: addr, log: logPath, exited: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(s.exited) }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return s, nil
		}
		select {
		case <-s.exited:
			b, _ := os.ReadFile(logPath)
			return nil, fmt.Errorf("%s exited at startup: %s", name, b)
		default:
		}
		if time.Now().After(deadline) {
			s.stop()
			return nil, fmt.Errorf("%s not listening on %s after 30s", name, addr)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// pid is the server proper's process id.
func (s *server) pid() int {
	if s.pidFile != "" {
		if b, err := os.ReadFile(s.pidFile); err == nil {
			if p, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
				return p
			}
		}
	}
	return s.cmd.Process.Pid
}

// stop stops the process gracefully (SIGTERM), killing it after 20s.
func (s *server) stop() {
	if p := s.pid(); p != s.cmd.Process.Pid {
		_ = syscall.Kill(p, syscall.SIGTERM)
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(20 * time.Second):
		if p := s.pid(); p != s.cmd.Process.Pid {
			_ = syscall.Kill(p, syscall.SIGKILL)
		}
		_ = s.cmd.Process.Kill()
		<-s.exited
	}
}

// peakRSS is the server process's VmHWM in bytes (0 if unknown).
func (s *server) peakRSS() int64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", s.pid()))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			fs := strings.Fields(rest)
			if len(fs) > 0 {
				kb, _ := strconv.ParseInt(fs[0], 10, 64)
				return kb << 10
			}
		}
	}
	return 0
}
