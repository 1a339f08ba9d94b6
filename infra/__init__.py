"""Platform services every process and activity relies on: settings, the key ring and payload
codec, logging, tracing, decision tokens, and what every entry point does around its work.
Nothing here knows a workflow or an activity."""
