import SwitchyardModels
import Testing

/// Golden tests for every mapping between the OpenAI and Anthropic wire formats.
@Suite struct TranslationTests {
    func json(_ text: String) throws -> JSONValue { try JSONValue.parse(text) }

    @Test func openAIRequestToAnthropic() throws {
        let request = try OpenAIFormat.parseRequest(json("""
            {"model": "claude-haiku-4-5", "temperature": 1.5, "max_tokens": 300, "stop": "END", "user": "u-1",
             "stream": true, "tool_choice": "required", "parallel_tool_calls": false, "frequency_penalty": 0.5,
             "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather",
                        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
             "messages": [
               {"role": "system", "content": "Be brief."},
               {"role": "user", "content": [{"type": "text", "text": "Weather in Paris and Rome?"},
                                            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
               {"role": "assistant", "content": null, "tool_calls": [
                 {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\\"city\\":\\"Paris\\"}"}},
                 {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": "{\\"city\\":\\"Rome\\"}"}}]},
               {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
               {"role": "tool", "tool_call_id": "call_2", "content": "24C"},
               {"role": "user", "content": "Thanks"}
             ]}
            """))
        let body = try AnthropicFormat.renderRequest(request, upstreamModel: "claude-haiku-4-5-20251001")
        #expect(body == (try json("""
            {"model": "claude-haiku-4-5-20251001", "max_tokens": 300, "temperature": 1, "stop_sequences": ["END"],
             "metadata": {"user_id": "u-1"}, "stream": true, "system": "Be brief.",
             "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
             "tools": [{"name": "get_weather", "description": "Weather",
                        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}],
             "messages": [
               {"role": "user", "content": [{"type": "text", "text": "Weather in Paris and Rome?"},
                                            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}]},
               {"role": "assistant", "content": [
                 {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
                 {"type": "tool_use", "id": "call_2", "name": "get_weather", "input": {"city": "Rome"}}]},
               {"role": "user", "content": [
                 {"type": "tool_result", "tool_use_id": "call_1", "content": [{"type": "text", "text": "18C"}]},
                 {"type": "tool_result", "tool_use_id": "call_2", "content": [{"type": "text", "text": "24C"}]},
                 {"type": "text", "text": "Thanks"}]}
             ]}
            """)))
    }

    @Test func anthropicRequestToOpenAI() throws {
        let request = try AnthropicFormat.parseRequest(json("""
            {"model": "gpt-4o", "max_tokens": 100, "stop_sequences": ["###"], "temperature": 0.2, "top_k": 5,
             "metadata": {"user_id": "u-2"}, "stream": true,
             "system": [{"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}}],
             "tool_choice": {"type": "tool", "name": "lookup"},
             "tools": [{"name": "lookup", "input_schema": {"type": "object"}, "cache_control": {"type": "ephemeral"}}],
             "messages": [
               {"role": "user", "content": "Find order 42"},
               {"role": "assistant", "content": [{"type": "text", "text": "Looking."},
                                                 {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"id": 42}}]},
               {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "shipped", "is_error": false}]}
             ]}
            """))
        let body = OpenAIFormat.renderRequest(request, upstreamModel: "gpt-4o-2024-08-06")
        #expect(body == (try json("""
            {"model": "gpt-4o-2024-08-06", "max_tokens": 100, "temperature": 0.2, "stop": ["###"], "user": "u-2",
             "stream": true, "stream_options": {"include_usage": true},
             "tool_choice": {"type": "function", "function": {"name": "lookup"}},
             "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}],
             "messages": [
               {"role": "system", "content": [{"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}}]},
               {"role": "user", "content": "Find order 42"},
               {"role": "assistant", "content": "Looking.",
                "tool_calls": [{"id": "toolu_1", "type": "function", "function": {"name": "lookup", "arguments": "{\\"id\\":42}"}}]},
               {"role": "tool", "tool_call_id": "toolu_1", "content": "shipped"}
             ]}
            """)))
    }

    @Test func sameFormatKeepsUnknownFieldsAndCrossFormatDropsThem() throws {
        let request = try OpenAIFormat.parseRequest(json("""
            {"model": "m", "messages": [{"role": "user", "content": "hi"}], "frequency_penalty": 0.5,
             "max_completion_tokens": 9, "seed": 12345678901234, "logprobs": true, "top_logprobs": 2}
            """))
        let openAI = OpenAIFormat.renderRequest(request, upstreamModel: "m2")
        #expect(openAI["frequency_penalty"] == 0.5)
        #expect(openAI["max_completion_tokens"] == 9)
        #expect(openAI["seed"] == .int(12_345_678_901_234))
        #expect(openAI["logprobs"] == true)
        var withoutLogprobs = request
        withoutLogprobs.logprobs = nil
        let anthropic = try AnthropicFormat.renderRequest(withoutLogprobs, upstreamModel: "c")
        #expect(anthropic["frequency_penalty"] == nil)
        #expect(throws: InvalidRequest.self) { try AnthropicFormat.renderRequest(request, upstreamModel: "c") }
    }

    @Test func anthropicResponseToOpenAI() throws {
        let response = try AnthropicFormat.parseResponse(json("""
            {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
             "content": [{"type": "text", "text": "Checking."}, {"type": "tool_use", "id": "toolu_9", "name": "f", "input": {"x": 1}}],
             "stop_reason": "tool_use", "stop_sequence": null,
             "usage": {"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 20}}
            """))
        #expect(response.usage == Usage(inputTokens: 10, outputTokens: 5, cacheReadTokens: 100, cacheWriteTokens: 20))
        let body = OpenAIFormat.renderResponse(response, created: 1_700_000_000)
        #expect(body == (try json("""
            {"id": "chatcmpl-msg_1", "object": "chat.completion", "created": 1700000000, "model": "claude-sonnet-4-5",
             "choices": [{"index": 0, "finish_reason": "tool_calls", "logprobs": null,
                          "message": {"role": "assistant", "content": "Checking.", "refusal": null,
                                      "tool_calls": [{"id": "toolu_9", "type": "function", "function": {"name": "f", "arguments": "{\\"x\\":1}"}}]}}],
             "usage": {"prompt_tokens": 130, "completion_tokens": 5, "total_tokens": 135, "prompt_tokens_details": {"cached_tokens": 100}}}
            """)))
    }

    @Test func openAIResponseToAnthropic() throws {
        let response = try OpenAIFormat.parseResponse(json("""
            {"id": "chatcmpl-7", "object": "chat.completion", "created": 1, "model": "gpt-4o",
             "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi there"}, "finish_reason": "length"}],
             "usage": {"prompt_tokens": 1200, "completion_tokens": 7, "total_tokens": 1207, "prompt_tokens_details": {"cached_tokens": 1024}}}
            """))
        #expect(response.usage == Usage(inputTokens: 176, outputTokens: 7, cacheReadTokens: 1024))
        #expect(AnthropicFormat.renderResponse(response) == (try json("""
            {"id": "msg_chatcmpl-7", "type": "message", "role": "assistant", "model": "gpt-4o",
             "content": [{"type": "text", "text": "Hi there"}], "stop_reason": "max_tokens", "stop_sequence": null,
             "usage": {"input_tokens": 176, "output_tokens": 7, "cache_read_input_tokens": 1024, "cache_creation_input_tokens": 0}}
            """)))
    }

    @Test(arguments: [("end_turn", "stop"), ("max_tokens", "length"), ("stop_sequence", "stop"), ("tool_use", "tool_calls"),
                      ("refusal", "content_filter")])
    func stopReasonsMapToFinishReasons(_ pair: (String, String)) throws {
        let response = try AnthropicFormat.parseResponse(json(#"{"id":"m","model":"x","content":[],"stop_reason":"\#(pair.0)"}"#))
        #expect(OpenAIFormat.renderResponse(response, created: 0)["choices"]?.arrayValue?.first?["finish_reason"] == .string(pair.1))
    }

    @Test func anthropicStreamToOpenAIChunks() throws {
        let events = [
            #"{"type":"message_start","message":{"id":"msg_1","model":"claude-haiku-4-5","usage":{"input_tokens":12,"output_tokens":1,"cache_read_input_tokens":3}}}"#,
            #"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            #"{"type":"ping"}"#,
            #"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hel"}}"#,
            #"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"lo"}}"#,
            #"{"type":"content_block_stop","index":0}"#,
            #"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_1","name":"f","input":{}}}"#,
            #"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"a\":"}}"#,
            #"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"1}"}}"#,
            #"{"type":"content_block_stop","index":1}"#,
            #"{"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":9}}"#,
            #"{"type":"message_stop"}"#,
        ]
        var parser = AnthropicStreamParser()
        var chunks: [ChatChunk] = []
        for event in events { chunks += try parser.parse(json(event)) }
        #expect(chunks == [
            .start(id: "msg_1", model: "claude-haiku-4-5", usage: Usage(inputTokens: 12, outputTokens: 1, cacheReadTokens: 3)),
            .text(choice: 0, "Hel"), .text(choice: 0, "lo"),
            .toolCallStart(choice: 0, index: 0, id: "toolu_1", name: "f"),
            .toolCallArguments(choice: 0, index: 0, "{\"a\":"), .toolCallArguments(choice: 0, index: 0, "1}"),
            .finish(choice: 0, .toolUse),
            .usage(Usage(inputTokens: 12, outputTokens: 9, cacheReadTokens: 3)),
        ])
        var encoder = OpenAIStreamEncoder(id: "req", model: "claude-haiku-4-5", created: 5, includeUsage: true)
        var output: [String] = []
        for chunk in chunks { output += encoder.encode(chunk).map { $0.jsonString(sortedKeys: true) } }
        output += encoder.finish().map { $0.jsonString(sortedKeys: true) }
        let head = #""created":5,"id":"chatcmpl-msg_1","model":"claude-haiku-4-5","object":"chat.completion.chunk""#
        #expect(output == [
            #"{"choices":[{"delta":{"content":"","role":"assistant"},"finish_reason":null,"index":0}],\#(head)}"#,
            #"{"choices":[{"delta":{"content":"Hel"},"finish_reason":null,"index":0}],\#(head)}"#,
            #"{"choices":[{"delta":{"content":"lo"},"finish_reason":null,"index":0}],\#(head)}"#,
            #"{"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"","name":"f"},"id":"toolu_1","index":0,"type":"function"}]},"finish_reason":null,"index":0}],\#(head)}"#,
            #"{"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"{\"a\":"},"index":0}]},"finish_reason":null,"index":0}],\#(head)}"#,
            #"{"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"1}"},"index":0}]},"finish_reason":null,"index":0}],\#(head)}"#,
            #"{"choices":[{"delta":{},"finish_reason":"tool_calls","index":0}],\#(head)}"#,
            #"{"choices":[],\#(head),"usage":{"completion_tokens":9,"prompt_tokens":15,"prompt_tokens_details":{"cached_tokens":3},"total_tokens":24}}"#,
        ])
    }

    @Test func openAIStreamToAnthropicEvents() throws {
        let chunks = [
            #"{"id":"chatcmpl-1","model":"gpt-4o","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#,
            #"{"id":"chatcmpl-1","model":"gpt-4o","choices":[{"index":0,"delta":{"content":"Sure"},"finish_reason":null}]}"#,
            #"{"id":"chatcmpl-1","model":"gpt-4o","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"f","arguments":""}}]},"finish_reason":null}]}"#,
            #"{"id":"chatcmpl-1","model":"gpt-4o","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{}"}}]},"finish_reason":null}]}"#,
            #"{"id":"chatcmpl-1","model":"gpt-4o","choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#,
            #"{"id":"chatcmpl-1","model":"gpt-4o","choices":[],"usage":{"prompt_tokens":50,"completion_tokens":4,"prompt_tokens_details":{"cached_tokens":10}}}"#,
        ]
        var started = false
        var encoder = AnthropicStreamEncoder(id: "req", model: "gpt-4o")
        var events: [(String, JSONValue)] = []
        for chunk in chunks {
            for canonical in try OpenAIFormat.parseChunk(json(chunk), started: &started) {
                events += encoder.encode(canonical).map { ($0.name, $0.data) }
            }
        }
        events += encoder.finish().map { ($0.name, $0.data) }
        #expect(events.map(\.0) == [
            "message_start", "content_block_start", "ping", "content_block_delta", "content_block_stop",
            "content_block_start", "content_block_delta", "content_block_stop", "message_delta", "message_stop",
        ])
        #expect(events[0].1["message"]?["id"] == "msg_chatcmpl-1")
        #expect(events[3].1 == (try json(#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Sure"}}"#)))
        #expect(events[5].1 == (try json(#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"call_1","name":"f","input":{}}}"#)))
        #expect(events[6].1 == (try json(#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{}"}}"#)))
        #expect(events[8].1 == (try json("""
            {"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},
             "usage":{"input_tokens":40,"output_tokens":4,"cache_read_input_tokens":10,"cache_creation_input_tokens":0}}
            """)))
    }

    @Test func anthropicErrorEventThrows() throws {
        var parser = AnthropicStreamParser()
        #expect(throws: UpstreamStreamError(type: "overloaded_error", message: "Overloaded")) {
            _ = try parser.parse(json(#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#))
        }
    }

    @Test(arguments: [
        (#"{"messages":[{"role":"user","content":"x"}]}"#, "model"),
        (#"{"model":"m","messages":[]}"#, "messages"),
        (#"{"model":"m","messages":[{"role":"robot","content":"x"}]}"#, "messages[0].role"),
        (#"{"model":"m","messages":[{"role":"user","content":5}]}"#, "messages[0].content"),
        (#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":3}"#, "temperature"),
        (#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":0}"#, "max_tokens"),
        (#"{"model":"m","messages":[{"role":"tool","content":"x"}]}"#, "messages[0].tool_call_id"),
        (#"{"model":"m","messages":[{"role":"user","content":"x"}],"response_format":{"type":"yaml"}}"#, "response_format.type"),
    ])
    func invalidOpenAIRequestsNameTheField(_ pair: (String, String)) throws {
        let body = try json(pair.0)
        let error = #expect(throws: InvalidRequest.self) { try OpenAIFormat.parseRequest(body) }
        #expect(error?.path == pair.1)
    }

    @Test func anthropicRequiresMaxTokens() throws {
        #expect(throws: InvalidRequest(path: "max_tokens", "is required")) {
            try AnthropicFormat.parseRequest(json(#"{"model":"m","messages":[{"role":"user","content":"x"}]}"#))
        }
    }
}
