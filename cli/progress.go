package cli

import (
	"fmt"
	"io"
	"time"
)

// withProgress runs f; on a terminal, once it has taken more than two
// seconds, it shows what is being waited for and for how long. Slot creation,
// for one, waits for every transaction open at that moment to finish.
func withProgress(w io.Writer, what string, f func() error) error {
	if !isTerminal(w) {
		return f()
	}
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		start := time.Now()
		t := time.NewTicker(time.Second)
		defer t.Stop()
		shown := false
		for {
			select {
			case <-done:
				if shown {
					fmt.Fprintln(w)
				}
				return
			case <-t.C:
				if d := time.Since(start); d > 2*time.Second {
					shown = true
					fmt.Fprintf(w, "\r%s… %s", what, d.Round(time.Second))
				}
			}
		}
	}()
	err := f()
	close(done)
	<-stopped
	return err
}
