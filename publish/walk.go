package publish

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"

	"github.com/pgaudit-cdc/pgaudit-cdc/chain"
)

// listLimit is the most events GET /events returns.
const listLimit = 100000

// Walk reads the whole chain in event_id order and calls fn with each event,
// one at a time (events can be large; the chain is never held whole).
// GET /events returns at most the newest 100,000 events, so older ones are
// read one by one with GET /events/{id}. progress, when set, is called every
// 10,000 events with how many were read and how many there were at the
// start.
func (c *Client) Walk(ctx context.Context, fn func(chain.Event) error, progress func(done, total int64)) error {
	var stats struct {
		Count       int64 `json:"count"`
		LastEventID int64 `json:"last_event_id"`
	}
	if err := c.getJSON(ctx, "/stats", func(r io.Reader) error { return json.NewDecoder(r).Decode(&stats) }); err != nil {
		return err
	}
	total := stats.LastEventID
	var done int64
	next := int64(1)
	emit := func(e chain.Event) error {
		if e.EventID < next {
			return nil // already read (a list overlapping the walk)
		}
		next = e.EventID + 1
		done++
		if progress != nil && done%10000 == 0 {
			progress(done, total)
		}
		return fn(e)
	}
	byID := func(id int64) error {
		return c.getJSON(ctx, "/events/"+strconv.FormatInt(id, 10), func(r io.Reader) error {
			e, err := decodeEvent(json.NewDecoder(r))
			if err != nil {
				return err
			}
			if e.EventID != id {
				return fmt.Errorf("GET /events/%d answered event %d", id, e.EventID)
			}
			return emit(e)
		})
	}
	listFrom := total - listLimit + 1
	for next < listFrom {
		if err := byID(next); err != nil {
			return err
		}
	}
	limit := total - next + 1
	if limit <= 0 {
		return nil
	}
	if limit > listLimit {
		limit = listLimit
	}
	return c.getJSON(ctx, "/events?limit="+strconv.FormatInt(limit, 10), func(r io.Reader) error {
		dec := json.NewDecoder(r)
		dec.UseNumber()
		_, err := readArray(dec, nil, func(dec *json.Decoder) error {
			e, err := decodeEvent(dec)
			if err != nil {
				return err
			}
			// Events appended since /stats push the list's start forward:
			// read the ones in between one by one.
			for e.EventID > next {
				if err := byID(next); err != nil {
					return err
				}
			}
			return emit(e)
		})
		if errors.Is(err, errNotArray) || errors.Is(err, errCutOff) {
			return fmt.Errorf("GET /events: %w", err)
		}
		return err
	})
}

func decodeEvent(dec *json.Decoder) (chain.Event, error) {
	dec.UseNumber()
	var e chain.Event
	if err := dec.Decode(&e); err != nil {
		return e, fmt.Errorf("reading an event: %w", err)
	}
	return e, nil
}

// getJSON GETs path from the spine and hands a 200's body to read.
// The timeout bounds the wait for the answer to start and each wait for
// more, not the whole answer (see scanEvents).
func (c *Client) getJSON(ctx context.Context, path string, read func(io.Reader) error) error {
	ctx, stall := withStallTimeout(ctx, c.cfg.Timeout)
	defer stall.stop()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base.String()+path, nil)
	if err != nil {
		return fmt.Errorf("building request: %w", err)
	}
	c.authorize(req)
	resp, err := c.readHTTP.Do(req)
	if err != nil {
		return fmt.Errorf("GET %s from the spine at %s: %w", path, c.base.Redacted(), stall.explain(redactErr(err)))
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		text, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("GET %s: the spine answered HTTP %d: %s", path, resp.StatusCode, Truncate(string(text), 200))
	}
	if err := read(stall.watch(resp.Body)); err != nil {
		return stall.explain(err)
	}
	return nil
}
