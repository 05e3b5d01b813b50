package spinetest

import (
	"bytes"
	_ "embed" // the spine's component schemas
	"encoding/json"
	"fmt"
	"sync"
)

// componentsFile is a copy of shared/audit-stream-openapi-components.json:
// the PublishRequest and GovernanceEvent schemas exactly as the real spine's
// pydantic v2 models generate them. TestComponentsCopyMatchesShared keeps
// the copy in step with shared/.
const componentsFile = "audit-stream-openapi-components.json"

//go:embed testdata/audit-stream-openapi-components.json
var componentsJSON []byte

// spineSchemas decodes componentsJSON once; openAPI copies the result.
var spineSchemas = sync.OnceValues(func() (map[string]any, error) {
	var doc struct {
		Components struct {
			Schemas map[string]any `json:"schemas"`
		} `json:"components"`
	}
	dec := json.NewDecoder(bytes.NewReader(componentsJSON))
	dec.UseNumber()
	if err := dec.Decode(&doc); err != nil {
		return nil, fmt.Errorf("decoding the embedded %s: %w", componentsFile, err)
	}
	for _, name := range []string{"PublishRequest", "GovernanceEvent"} {
		if _, ok := dig(doc.Components.Schemas, name, "properties", "kind").(map[string]any); !ok {
			return nil, fmt.Errorf("the embedded %s has no %s.properties.kind", componentsFile, name)
		}
	}
	return doc.Components.Schemas, nil
})

// dig walks nested objects by key.
func dig(v any, keys ...string) any {
	for _, k := range keys {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[k]
	}
	return v
}

// openAPI builds a FastAPI-shaped OpenAPI document: the paths the double
// serves and the component schemas. PublishRequest and GovernanceEvent are
// the real spine's (componentsFile), with the kind enum of both replaced by
// the kinds accepted right now, in order; as on the real spine (pydantic v2
// inlines the Literal) there is no separate EventKind schema, so producers
// must read components.schemas.PublishRequest.properties.kind.enum.
// Operation ids and the validation-error schemas imitate FastAPI's
// conventions; only the two spine schemas are meant to be relied upon.
// It fails only if the embedded file is broken, which its tests catch.
// It is long on purpose: one document literal, read top to bottom like
// the JSON it becomes; cut into functions it would be harder to compare
// with FastAPI's.
func (s *Server) openAPI() (map[string]any, error) {
	base, err := spineSchemas()
	if err != nil {
		return nil, err
	}
	schemas := deepCopy(base).(map[string]any)
	kinds := s.Kinds()
	enum := func() []any {
		out := make([]any, len(kinds))
		for i, k := range kinds {
			out[i] = k
		}
		return out
	}
	for _, name := range []string{"PublishRequest", "GovernanceEvent"} {
		dig(schemas, name, "properties", "kind").(map[string]any)["enum"] = enum()
	}

	ref := func(name string) map[string]any {
		return map[string]any{"$ref": "#/components/schemas/" + name}
	}
	jsonContent := func(schema map[string]any) map[string]any {
		return map[string]any{"application/json": map[string]any{"schema": schema}}
	}
	ok := func(schema map[string]any) map[string]any {
		return map[string]any{"description": "Successful Response", "content": jsonContent(schema)}
	}
	invalid := map[string]any{"description": "Validation Error", "content": jsonContent(ref("HTTPValidationError"))}
	nullable := func(schema map[string]any, title string) map[string]any {
		return map[string]any{"anyOf": []any{schema, map[string]any{"type": "null"}}, "title": title}
	}
	getOp := func(summary, opID string, schema map[string]any) map[string]any {
		return map[string]any{
			"summary":     summary,
			"operationId": opID,
			"responses":   map[string]any{"200": ok(schema)},
		}
	}
	eventsArray := map[string]any{"type": "array", "items": ref("GovernanceEvent"), "title": "Response List Events Events Get"}
	kindParam := map[string]any{"type": "string", "enum": enum()}

	schemas["HTTPValidationError"] = map[string]any{
		"type":       "object",
		"title":      "HTTPValidationError",
		"properties": map[string]any{"detail": map[string]any{"type": "array", "items": ref("ValidationError"), "title": "Detail"}},
	}
	schemas["ValidationError"] = map[string]any{
		"type":     "object",
		"title":    "ValidationError",
		"required": []any{"loc", "msg", "type"},
		"properties": map[string]any{
			"loc":  map[string]any{"type": "array", "items": map[string]any{"anyOf": []any{map[string]any{"type": "string"}, map[string]any{"type": "integer"}}}, "title": "Location"},
			"msg":  map[string]any{"type": "string", "title": "Message"},
			"type": map[string]any{"type": "string", "title": "Error Type"},
		},
	}

	return map[string]any{
		"openapi": "3.1.0",
		"info":    map[string]any{"title": "audit-stream", "version": "0.1.0"},
		"paths": map[string]any{
			"/events": map[string]any{
				"post": map[string]any{
					"summary":     "Append Event",
					"operationId": "append_event_events_post",
					"requestBody": map[string]any{"content": jsonContent(ref("PublishRequest")), "required": true},
					"responses": map[string]any{
						"201": ok(ref("GovernanceEvent")),
						"422": invalid,
					},
				},
				"get": map[string]any{
					"summary":     "List Events",
					"operationId": "list_events_events_get",
					"parameters": []any{
						map[string]any{"name": "kind", "in": "query", "required": false, "schema": nullable(kindParam, "Kind")},
						map[string]any{"name": "source", "in": "query", "required": false, "schema": nullable(map[string]any{"type": "string"}, "Source")},
						map[string]any{"name": "limit", "in": "query", "required": false, "schema": map[string]any{"type": "integer", "default": DefaultLimit, "title": "Limit"}},
					},
					"responses": map[string]any{"200": ok(eventsArray), "422": invalid},
				},
			},
			"/events/{event_id}": map[string]any{
				"get": map[string]any{
					"summary":     "Get Event",
					"operationId": "get_event_events__event_id__get",
					"parameters": []any{
						map[string]any{"name": "event_id", "in": "path", "required": true, "schema": map[string]any{"type": "integer", "title": "Event Id"}},
					},
					"responses": map[string]any{"200": ok(ref("GovernanceEvent")), "422": invalid},
				},
			},
			"/stats":   map[string]any{"get": getOp("Stats", "stats_stats_get", map[string]any{})},
			"/verify":  map[string]any{"get": getOp("Verify", "verify_verify_get", map[string]any{})},
			"/healthz": map[string]any{"get": getOp("Healthz", "healthz_healthz_get", map[string]any{})},
		},
		"components": map[string]any{"schemas": schemas},
	}, nil
}
