// Package codelimits holds, in its test, the size limits of ferry's code:
// no non-generated, non-test Go file over MaxFileLines lines and no
// function over MaxFuncLines lines unless its doc comment names an
// exception, a line starting "long function:" that says why.
package codelimits

const (
	// MaxFileLines is the most lines a non-generated, non-test Go file
	// may have.
	MaxFileLines = 800
	// MaxFuncLines is the most lines a function (from its func keyword to
	// its closing brace) may have without a named exception.
	MaxFuncLines = 100
	// ExceptionPrefix starts the doc comment line that exempts a function
	// from MaxFuncLines; the rest of the line says why.
	ExceptionPrefix = "long function:"
)
