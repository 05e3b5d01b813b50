package publish

import (
	"encoding/json"
	"errors"
	"fmt"
)

// errNotArray says an answer did not start as a JSON array: it is not the
// spine's list of events (a proxy's page, a refusal's body).
var errNotArray = errors.New("the spine's answer is not a JSON array")

// errCutOff says a list from the spine ended before its closing bracket.
var errCutOff = errors.New("the spine's answer ended early")

// readArray reads one JSON array from dec, calling opened (when set) once
// its opening bracket is read and each with dec at every element, and
// returns how many elements it read. It is the one place that
// decides a list from the spine is whole: json.Decoder.More says false on a
// read error as well as at the end, so only the closing bracket counts, and
// a list cut off in the middle is an error, never a shorter trail. Errors
// from each are returned as they are.
func readArray(dec *json.Decoder, opened func(), each func(*json.Decoder) error) (int, error) {
	tok, err := dec.Token()
	if err != nil {
		return 0, fmt.Errorf("%w: %w", errNotArray, err)
	}
	if tok != json.Delim('[') {
		return 0, fmt.Errorf("%w (it starts with %v)", errNotArray, tok)
	}
	if opened != nil {
		opened()
	}
	n := 0
	for dec.More() {
		if err := each(dec); err != nil {
			return n, err
		}
		n++
	}
	if _, err := dec.Token(); err != nil {
		return n, fmt.Errorf("%w, after %d events: %w", errCutOff, n, err)
	}
	return n, nil
}
