package spinetest

// openAPI builds a minimal FastAPI-shaped OpenAPI document: the paths the
// double serves and the component schemas, with components.schemas.EventKind
// listing the kinds accepted right now, in order. Operation ids and the
// names of the other schemas imitate FastAPI's conventions; only the
// EventKind enum is meant to be relied upon.
func (s *Server) openAPI() map[string]any {
	kinds := s.Kinds()
	enum := make([]any, len(kinds))
	for i, k := range kinds {
		enum[i] = k
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
	eventsArray := map[string]any{"type": "array", "items": ref("Event"), "title": "Response List Events Events Get"}

	return map[string]any{
		"openapi": "3.1.0",
		"info":    map[string]any{"title": "audit-stream", "version": "0.1.0"},
		"paths": map[string]any{
			"/events": map[string]any{
				"post": map[string]any{
					"summary":     "Append Event",
					"operationId": "append_event_events_post",
					"requestBody": map[string]any{"content": jsonContent(ref("EventIn")), "required": true},
					"responses": map[string]any{
						"201": ok(ref("Event")),
						"422": invalid,
					},
				},
				"get": map[string]any{
					"summary":     "List Events",
					"operationId": "list_events_events_get",
					"parameters": []any{
						map[string]any{"name": "kind", "in": "query", "required": false, "schema": nullable(ref("EventKind"), "Kind")},
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
					"responses": map[string]any{"200": ok(ref("Event")), "422": invalid},
				},
			},
			"/stats":   map[string]any{"get": getOp("Stats", "stats_stats_get", map[string]any{})},
			"/verify":  map[string]any{"get": getOp("Verify", "verify_verify_get", map[string]any{})},
			"/healthz": map[string]any{"get": getOp("Healthz", "healthz_healthz_get", map[string]any{})},
		},
		"components": map[string]any{
			"schemas": map[string]any{
				"EventKind": map[string]any{"type": "string", "enum": enum, "title": "EventKind"},
				"EventIn": map[string]any{
					"type":                 "object",
					"title":                "EventIn",
					"additionalProperties": false,
					"required":             []any{"kind", "source"},
					"properties": map[string]any{
						"kind":      ref("EventKind"),
						"source":    map[string]any{"type": "string", "minLength": 1, "title": "Source"},
						"payload":   map[string]any{"type": "object", "additionalProperties": true, "title": "Payload"},
						"timestamp": nullable(map[string]any{"type": "string", "format": "date-time"}, "Timestamp"),
					},
				},
				"Event": map[string]any{
					"type":     "object",
					"title":    "Event",
					"required": []any{"event_id", "timestamp", "kind", "source", "payload", "prev_hash", "hash"},
					"properties": map[string]any{
						"event_id":  map[string]any{"type": "integer", "title": "Event Id"},
						"timestamp": map[string]any{"type": "string", "format": "date-time", "title": "Timestamp"},
						"kind":      ref("EventKind"),
						"source":    map[string]any{"type": "string", "title": "Source"},
						"payload":   map[string]any{"type": "object", "additionalProperties": true, "title": "Payload"},
						"prev_hash": map[string]any{"type": "string", "title": "Prev Hash"},
						"hash":      map[string]any{"type": "string", "title": "Hash"},
					},
				},
				"HTTPValidationError": map[string]any{
					"type":       "object",
					"title":      "HTTPValidationError",
					"properties": map[string]any{"detail": map[string]any{"type": "array", "items": ref("ValidationError"), "title": "Detail"}},
				},
				"ValidationError": map[string]any{
					"type":     "object",
					"title":    "ValidationError",
					"required": []any{"loc", "msg", "type"},
					"properties": map[string]any{
						"loc":  map[string]any{"type": "array", "items": map[string]any{"anyOf": []any{map[string]any{"type": "string"}, map[string]any{"type": "integer"}}}, "title": "Location"},
						"msg":  map[string]any{"type": "string", "title": "Message"},
						"type": map[string]any{"type": "string", "title": "Error Type"},
					},
				},
			},
		},
	}
}
