package ferrytest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

// FerryPkg is the import path of the ferry command.
const FerryPkg = "github.com/ferrymq/ferry/cmd/ferry"

// builds are the binaries built for this test binary, by package and tags.
var (
	buildsMu sync.Mutex
	builds   = map[[2]string]*build{}
)

type build struct {
	once sync.Once
	dir  string
	path string
	err  error
}

// Ferry builds the ferry command once per test binary and returns the
// binary's path.
func Ferry(tb testing.TB) string { return Build(tb, FerryPkg, "") }

// Build builds the main package pkg (an import path, or a directory such
// as "." as go build takes it, relative to the test's package) with the
// build tags tags (as go build -tags takes them) into a temporary
// directory, once per test binary, package and tags, and returns the
// binary's path. The directories go when Main's m.Run returns.
func Build(tb testing.TB, pkg, tags string) string {
	tb.Helper()
	buildsMu.Lock()
	b, ok := builds[[2]string{pkg, tags}]
	if !ok {
		b = &build{}
		builds[[2]string{pkg, tags}] = b
	}
	buildsMu.Unlock()
	b.once.Do(func() {
		b.dir, b.err = os.MkdirTemp("", "ferry-bin-")
		if b.err != nil {
			return
		}
		name := filepath.Base(pkg)
		if wd, err := os.Getwd(); err == nil && !filepath.IsAbs(pkg) && (pkg == "." || pkg[0] == '.') {
			name = filepath.Base(filepath.Join(wd, pkg))
		}
		b.path = filepath.Join(b.dir, name)
		out, err := exec.Command("go", "build", "-tags", tags, "-o", b.path, pkg).CombinedOutput()
		if err != nil {
			b.err = fmt.Errorf("go build -tags %q %s: %w\n%s", tags, pkg, err, out)
		}
	})
	if b.err != nil {
		tb.Fatal(b.err)
	}
	return b.path
}

// Main runs the tests of m and removes the binaries Build made; a
// package's TestMain calls os.Exit(ferrytest.Main(m)).
func Main(m *testing.M) int {
	code := m.Run()
	buildsMu.Lock()
	defer buildsMu.Unlock()
	for _, b := range builds {
		if b.dir != "" {
			os.RemoveAll(b.dir)
		}
	}
	return code
}

// ModuleRoot is the directory of the go.mod above the test's working
// directory: the repository's root.
func ModuleRoot(tb testing.TB) string {
	tb.Helper()
	dir, err := filepath.Abs(".")
	if err != nil {
		tb.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			tb.Fatal("no go.mod above the test's directory")
		}
		dir = parent
	}
}
