package cluster

import (
	"context"
	"fmt"
	"log/slog"
)

// raftLogger passes Raft's logs to slog. Raft logs every vote and state
// change at info; those go to debug here, and the group logs one line
// per leader change itself. Panic and Fatal panic, as Raft expects.
type raftLogger struct{ log *slog.Logger }

func (l raftLogger) logf(level slog.Level, format string, v ...any) {
	if l.log.Enabled(context.Background(), level) {
		l.log.Log(context.Background(), level, "raft: "+fmt.Sprintf(format, v...))
	}
}

func (l raftLogger) Debug(v ...any)                 { l.logf(slog.LevelDebug, "%s", fmt.Sprint(v...)) }
func (l raftLogger) Debugf(format string, v ...any) { l.logf(slog.LevelDebug, format, v...) }
func (l raftLogger) Info(v ...any)                  { l.logf(slog.LevelDebug, "%s", fmt.Sprint(v...)) }
func (l raftLogger) Infof(format string, v ...any)  { l.logf(slog.LevelDebug, format, v...) }
func (l raftLogger) Warning(v ...any)               { l.logf(slog.LevelWarn, "%s", fmt.Sprint(v...)) }
func (l raftLogger) Warningf(format string, v ...any) {
	l.logf(slog.LevelWarn, format, v...)
}
func (l raftLogger) Error(v ...any)                 { l.logf(slog.LevelError, "%s", fmt.Sprint(v...)) }
func (l raftLogger) Errorf(format string, v ...any) { l.logf(slog.LevelError, format, v...) }
func (l raftLogger) Fatal(v ...any)                 { l.Panic(v...) }
func (l raftLogger) Fatalf(format string, v ...any) { l.Panicf(format, v...) }
func (l raftLogger) Panic(v ...any) {
	s := fmt.Sprint(v...)
	l.logf(slog.LevelError, "%s", s)
	panic(s)
}
func (l raftLogger) Panicf(format string, v ...any) {
	s := fmt.Sprintf(format, v...)
	l.logf(slog.LevelError, "%s", s)
	panic(s)
}
