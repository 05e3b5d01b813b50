package preflight

import (
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
// environment, and the string is never echoed (it may hold a password).
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
			return nil, fmt.Errorf("missing \"=\" after %q in the connection string", key)
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
				return nil, fmt.Errorf("unterminated quoted value of %q in the connection string", key)
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
			return "", fmt.Errorf("bad database name in the connection URI: %v", err)
		}
		db = path
	}
	for _, kv := range strings.Split(query, "&") {
		if kv == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return "", fmt.Errorf("missing \"=\" in URI query parameter %q", k)
		}
		key, err := url.PathUnescape(k)
		if err != nil {
			return "", fmt.Errorf("bad URI query parameter: %v", err)
		}
		if key != "dbname" {
			continue
		}
		if db, err = url.PathUnescape(v); err != nil {
			return "", fmt.Errorf("bad dbname in the connection URI: %v", err)
		}
	}
	return db, nil
}
