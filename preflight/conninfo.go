package preflight

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// conninfoDBName returns the database a libpq connection string names (""
// when it names none), as PostgreSQL's slot synchronisation reads it from
// primary_conninfo (PQconninfoParse, no defaults from the environment): a
// keyword/value string ("host=a dbname = 'my db'", with libpq's quoting and
// backslash escapes) or a URI ("postgresql://host:5432/db?...", where a
// dbname parameter overrides the path). Nothing is read from files or the
// environment, and the string is never echoed, not even in an error (it
// may hold a password): errors give positions, not text.
func conninfoDBName(conninfo string) (string, error) {
	s := strings.TrimSpace(conninfo)
	if strings.HasPrefix(s, "postgresql://") || strings.HasPrefix(s, "postgres://") {
		return uriDBName(s)
	}
	params, err := parseKeywordValue(s)
	if err != nil {
		return "", err
	}
	return params["dbname"], nil
}

// parseKeywordValue parses a keyword/value connection string as libpq's
// conninfo_parse does; a keyword given twice keeps its last value.
func parseKeywordValue(s string) (map[string]string, error) {
	params := map[string]string{}
	isSpace := func(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v' }
	i := 0
	for {
		for i < len(s) && isSpace(s[i]) {
			i++
		}
		if i >= len(s) {
			return params, nil
		}
		start := i
		for i < len(s) && s[i] != '=' && !isSpace(s[i]) {
			i++
		}
		key := s[start:i]
		for i < len(s) && isSpace(s[i]) {
			i++
		}
		if i >= len(s) || s[i] != '=' {
			return nil, fmt.Errorf("missing \"=\" after the word at byte %d of the connection string", start)
		}
		i++ // '='
		for i < len(s) && isSpace(s[i]) {
			i++
		}
		var v strings.Builder
		if i < len(s) && s[i] == '\'' {
			i++
			closed := false
			for i < len(s) {
				c := s[i]
				if c == '\\' && i+1 < len(s) {
					v.WriteByte(s[i+1])
					i += 2
					continue
				}
				if c == '\'' {
					i++
					closed = true
					break
				}
				v.WriteByte(c)
				i++
			}
			if !closed {
				return nil, fmt.Errorf("unterminated quoted value after byte %d of the connection string", start)
			}
		} else {
			for i < len(s) && !isSpace(s[i]) {
				if s[i] == '\\' && i+1 < len(s) {
					i++
				}
				v.WriteByte(s[i])
				i++
			}
		}
		params[key] = v.String()
	}
}

// uriDBName returns the database of a postgresql:// URI: its path, or its
// dbname parameter, which libpq stores after the path and so wins.
func uriDBName(s string) (string, error) {
	rest := s[strings.Index(s, "://")+3:]
	query := ""
	if q := strings.IndexByte(rest, '?'); q >= 0 {
		rest, query = rest[:q], rest[q+1:]
	}
	// The user part ends at '@' (libpq looks for it before the first '/').
	if at := strings.IndexAny(rest, "@/"); at >= 0 && rest[at] == '@' {
		rest = rest[at+1:]
	}
	db := ""
	// The host part: bracketed IPv6 addresses may hold no '/'.
	if slash := strings.IndexByte(rest, '/'); slash >= 0 {
		path, err := url.PathUnescape(rest[slash+1:])
		if err != nil {
			return "", errors.New("bad %-escape in the database name of the connection URI")
		}
		db = path
	}
	for _, kv := range strings.Split(query, "&") {
		if kv == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return "", errors.New("a URI query parameter without \"=\"")
		}
		key, err := url.PathUnescape(k)
		if err != nil {
			return "", errors.New("bad %-escape in a URI query parameter")
		}
		if key != "dbname" {
			continue
		}
		if db, err = url.PathUnescape(v); err != nil {
			return "", errors.New("bad %-escape in the dbname of the connection URI")
		}
	}
	return db, nil
}
