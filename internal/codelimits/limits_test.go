package codelimits

import (
	"bufio"
	"bytes"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/ferrymq/ferry/internal/ferrytest"
)

// generated matches the header Go's convention gives generated files.
var generated = regexp.MustCompile(`(?m)^// Code generated .* DO NOT EDIT\.$`)

// TestLimits walks the module's non-generated, non-test Go files and fails
// for each file over MaxFileLines and each function over MaxFuncLines
// without a named exception.
func TestLimits(t *testing.T) {
	root := ferrytest.ModuleRoot(t)
	var files int
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			name := d.Name()
			if path != root && (strings.HasPrefix(name, ".") || name == "testdata" || name == "vendor" || name == "node_modules") {
				return filepath.SkipDir
			}
			if _, err := os.Stat(filepath.Join(path, "go.mod")); err == nil && path != root {
				return filepath.SkipDir // another module
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") || strings.HasSuffix(path, ".pb.go") {
			return nil
		}
		src, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if generated.Match(src) {
			return nil
		}
		files++
		rel, _ := filepath.Rel(root, path)
		for _, v := range violations(rel, src) {
			t.Error(v)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if files < 50 {
		t.Fatalf("checked %d files under %s: the walk missed the module", files, root)
	}
}

// TestViolations: the check counts a function from func to its closing
// brace, takes a named exception only with a reason, and counts a file's
// lines.
func TestViolations(t *testing.T) {
	body := func(n int) string { return strings.Repeat("\t_ = 0\n", n) }
	fn := func(doc string, lines int) string { // lines in all, func to }
		return doc + "func f() {\n" + body(lines-2) + "}\n"
	}
	file := func(lines int) string { // a file of lines lines
		return "package p\n" + strings.Repeat("// x\n", lines-3) + "func f() {\n}\n"
	}
	for _, c := range []struct {
		name string
		src  string
		want int
	}{
		{"100 lines", "package p\n\n" + fn("", MaxFuncLines), 0},
		{"101 lines", "package p\n\n" + fn("", MaxFuncLines+1), 1},
		{"101 lines, excepted", "package p\n\n" + fn("// f does.\n//\n// long function: a table reads best whole.\n", MaxFuncLines+1), 0},
		{"101 lines, exception without a reason", "package p\n\n" + fn("// long function:\n", MaxFuncLines+1), 1},
		{"file of 800 lines", file(MaxFileLines), 0},
		{"file of 801 lines", file(MaxFileLines + 1), 1},
	} {
		if got := violations("p.go", []byte(c.src)); len(got) != c.want {
			t.Errorf("%s: %d violations %q, want %d", c.name, len(got), got, c.want)
		}
	}
}

// violations lists what breaks the limits in the file at path with src.
func violations(path string, src []byte) []string {
	var out []string
	if n := bytes.Count(src, []byte("\n")); n > MaxFileLines {
		out = append(out, fmt.Sprintf("%s: %d lines, over %d: split it by story", path, n, MaxFileLines))
	}
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, path, src, parser.ParseComments)
	if err != nil {
		return append(out, fmt.Sprintf("%s: %v", path, err))
	}
	for _, d := range f.Decls {
		fn, ok := d.(*ast.FuncDecl)
		if !ok || fn.Body == nil {
			continue
		}
		n := fset.Position(fn.End()).Line - fset.Position(fn.Pos()).Line + 1
		if n > MaxFuncLines && !excepted(fn.Doc) {
			out = append(out, fmt.Sprintf("%s:%d: %s is %d lines, over %d: split it into named steps, or say why not in a %q line of its doc comment",
				path, fset.Position(fn.Pos()).Line, fn.Name.Name, n, MaxFuncLines, ExceptionPrefix))
		}
	}
	return out
}

// excepted reports whether doc has a line starting ExceptionPrefix with a
// reason after it.
func excepted(doc *ast.CommentGroup) bool {
	if doc == nil {
		return false
	}
	sc := bufio.NewScanner(strings.NewReader(doc.Text()))
	for sc.Scan() {
		if reason, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), ExceptionPrefix); ok && strings.TrimSpace(reason) != "" {
			return true
		}
	}
	return false
}
