/// The OpenAI Chat Completions wire format: requests, responses and stream chunks to and from canonical form.
public enum OpenAIFormat {
    static let knownRequestKeys: Set<String> = [
        "model", "messages", "tools", "tool_choice", "parallel_tool_calls", "max_tokens", "max_completion_tokens",
        "temperature", "top_p", "stop", "seed", "response_format", "logprobs", "top_logprobs", "n", "user", "stream",
        "stream_options",
    ]

    // MARK: Requests

    /// Decodes and validates a Chat Completions request body.
    /// - Throws: `InvalidRequest` naming the key path.
    public static func parseRequest(_ body: JSONValue) throws(InvalidRequest) -> ChatRequest {
        let root = try FieldReader(body, path: "")
        let model = try root.string("model")
        guard !model.isEmpty else { throw InvalidRequest(path: "model", "must not be empty") }
        let rawMessages = try root.array("messages")
        guard !rawMessages.isEmpty else { throw InvalidRequest(path: "messages", "must contain at least one message") }
        var messages: [ChatMessage] = []
        messages.reserveCapacity(rawMessages.count)
        for (offset, raw) in rawMessages.enumerated() {
            messages.append(try parseMessage(raw, path: "messages[\(offset)]"))
        }
        var tools: [ToolDefinition] = []
        for (offset, raw) in (try root.optionalArray("tools") ?? []).enumerated() {
            let path = "tools[\(offset)]"
            let tool = try FieldReader(raw, path: path)
            let type = try tool.optionalString("type") ?? "function"
            guard type == "function" else { throw InvalidRequest(path: tool.child("type"), "unsupported tool type '\(type)'") }
            guard let function = try tool.object("function") else { throw InvalidRequest(path: tool.child("function"), "is required") }
            tools.append(ToolDefinition(
                name: try function.string("name"), description: try function.optionalString("description"),
                inputSchema: function.value("parameters") ?? ["type": "object", "properties": [:]],
                strict: try function.optionalBool("strict")))
        }
        var maxTokens = try root.optionalInt("max_completion_tokens", in: 1...Int64(Int32.max))
        if maxTokens == nil { maxTokens = try root.optionalInt("max_tokens", in: 1...Int64(Int32.max)) }
        var includeUsage = false
        if let options = try root.object("stream_options") {
            includeUsage = try options.optionalBool("include_usage") ?? false
        }
        if let format = root.value("response_format") {
            let reader = try FieldReader(format, path: "response_format")
            let type = try reader.string("type")
            guard ["text", "json_object", "json_schema"].contains(type) else {
                throw InvalidRequest(path: "response_format.type", "must be 'text', 'json_object' or 'json_schema'")
            }
        }
        return ChatRequest(
            model: model, messages: messages, tools: tools,
            toolChoice: try parseToolChoice(root.value("tool_choice")),
            parallelToolCalls: try root.optionalBool("parallel_tool_calls"),
            maxTokens: maxTokens?.asInt,
            temperature: try root.optionalDouble("temperature", in: 0...2),
            topP: try root.optionalDouble("top_p", in: 0...1),
            stop: try root.stringOrStrings("stop"),
            seed: try root.optionalInt("seed"),
            responseFormat: root.value("response_format"),
            logprobs: try root.optionalBool("logprobs"),
            topLogprobs: try root.optionalInt("top_logprobs", in: 0...20)?.asInt,
            n: try root.optionalInt("n", in: 1...128)?.asInt,
            user: try root.optionalString("user"),
            stream: try root.optionalBool("stream") ?? false,
            streamIncludeUsage: includeUsage,
            sourceFormat: .openAI,
            extras: root.extras(excluding: knownRequestKeys),
            usesMaxCompletionTokens: root.has("max_completion_tokens"))
    }

    static func parseToolChoice(_ value: JSONValue?) throws(InvalidRequest) -> ToolChoice? {
        guard let value else { return nil }
        switch value {
        case .string("auto"): return .auto
        case .string("none"): return .disabled
        case .string("required"): return .required
        case .object:
            let reader = try FieldReader(value, path: "tool_choice")
            guard let function = try reader.object("function") else {
                throw InvalidRequest(path: "tool_choice.function", "is required")
            }
            return .tool(try function.string("name"))
        default:
            throw InvalidRequest(path: "tool_choice", "must be 'auto', 'none', 'required' or a function object")
        }
    }

    static func parseMessage(_ raw: JSONValue, path: String) throws(InvalidRequest) -> ChatMessage {
        let message = try FieldReader(raw, path: path)
        let roleName = try message.string("role")
        guard let role = Role(rawValue: roleName) else {
            throw InvalidRequest(path: message.child("role"),
                                 "must be one of 'system', 'developer', 'user', 'assistant', 'tool'")
        }
        var content = try parseContent(message.value("content"), path: message.child("content"))
        switch role {
        case .tool:
            let id = try message.string("tool_call_id")
            return ChatMessage(role: .tool, content: [.toolResult(toolUseID: id, content: content, isError: false)])
        case .assistant:
            for (offset, rawCall) in (try message.optionalArray("tool_calls") ?? []).enumerated() {
                let call = try FieldReader(rawCall, path: "\(message.child("tool_calls"))[\(offset)]")
                guard let function = try call.object("function") else {
                    throw InvalidRequest(path: call.child("function"), "is required")
                }
                content.append(.toolUse(id: try call.string("id"), name: try function.string("name"),
                                        arguments: try function.optionalString("arguments") ?? "{}"))
            }
        case .user, .system, .developer:
            guard message.has("content") else { throw InvalidRequest(path: message.child("content"), "is required") }
        }
        return ChatMessage(role: role, content: content, name: try message.optionalString("name"))
    }

    static func parseContent(_ value: JSONValue?, path: String) throws(InvalidRequest) -> [ContentBlock] {
        guard let value else { return [] }
        switch value {
        case .string(let text): return [.text(text)]
        case .array(let parts):
            var blocks: [ContentBlock] = []
            for (offset, rawPart) in parts.enumerated() {
                let part = try FieldReader(rawPart, path: "\(path)[\(offset)]")
                switch try part.string("type") {
                case "text":
                    blocks.append(.text(try part.string("text"), cacheControl: part.value("cache_control")))
                case "image_url":
                    guard let image = try part.object("image_url") else {
                        throw InvalidRequest(path: part.child("image_url"), "is required")
                    }
                    blocks.append(.image(parseImageURL(try image.string("url")), cacheControl: part.value("cache_control")))
                default:
                    blocks.append(.raw(rawPart, format: .openAI))
                }
            }
            return blocks
        default:
            throw InvalidRequest(path: path, "expected a string or an array of content parts, got \(value.typeName)")
        }
    }

    static func parseImageURL(_ url: String) -> ImageSource {
        // data:image/png;base64,....
        if url.hasPrefix("data:"), let comma = url.firstIndex(of: ","), url[..<comma].hasSuffix(";base64") {
            let header = url[url.index(url.startIndex, offsetBy: 5)..<comma].dropLast(";base64".count)
            return .base64(mediaType: String(header), data: String(url[url.index(after: comma)...]))
        }
        return .url(url)
    }

    /// Encodes a canonical request as a Chat Completions body for `upstreamModel`.
    ///
    /// Streaming requests always ask for usage, whatever the client asked; the gateway strips it again.
    public static func renderRequest(_ request: ChatRequest, upstreamModel: String) -> JSONValue {
        var body = JSONObjectBuilder(request.sourceFormat == .openAI ? request.extras : [:])
        body.set("model", upstreamModel)
        var messages: [JSONValue] = []
        if !request.system.isEmpty {
            messages.append(["role": "system", "content": renderContent(request.system)])
        }
        for message in request.messages {
            messages.append(contentsOf: renderMessage(message))
        }
        body.set("messages", .array(messages))
        if !request.tools.isEmpty {
            body.set("tools", .array(request.tools.map { tool in
                var function = JSONObjectBuilder()
                function.set("name", tool.name)
                function.set("description", tool.description)
                function.set("parameters", tool.inputSchema)
                function.set("strict", tool.strict)
                return ["type": "function", "function": function.value]
            }))
        }
        switch request.toolChoice {
        case .auto: body.set("tool_choice", "auto")
        case .disabled: body.set("tool_choice", "none")
        case .required: body.set("tool_choice", "required")
        case .tool(let name): body.set("tool_choice", ["type": "function", "function": ["name": .string(name)]] as JSONValue)
        case nil: break
        }
        body.set("parallel_tool_calls", request.parallelToolCalls)
        // The client's spelling is kept; `max_tokens` otherwise, which every OpenAI-compatible server knows.
        body.set(request.usesMaxCompletionTokens ? "max_completion_tokens" : "max_tokens", request.maxTokens)
        body.set("temperature", request.temperature)
        body.set("top_p", request.topP)
        if !request.stop.isEmpty { body.set("stop", .array(request.stop.map { .string($0) })) }
        body.set("seed", request.seed.map { JSONValue.int($0) })
        body.set("response_format", request.responseFormat)
        body.set("logprobs", request.logprobs)
        body.set("top_logprobs", request.topLogprobs)
        body.set("n", request.n)
        body.set("user", request.user)
        if request.stream {
            body.set("stream", true)
            body.set("stream_options", ["include_usage": true] as JSONValue)
        }
        return body.value
    }

    static func renderMessage(_ message: ChatMessage) -> [JSONValue] {
        var output: [JSONValue] = []
        var toolCalls: [JSONValue] = []
        var rest: [ContentBlock] = []
        for block in message.content {
            switch block {
            case .toolResult(let id, let content, let isError, _):
                var text = content.compactMap(\.text).joined(separator: "\n")
                if isError, !text.hasPrefix("Error") { text = "Error: " + text }
                output.append(["role": "tool", "tool_call_id": .string(id), "content": .string(text)])
            case .toolUse(let id, let name, let arguments):
                toolCalls.append(["id": .string(id), "type": "function",
                                  "function": ["name": .string(name), "arguments": .string(arguments)]])
            default:
                rest.append(block)
            }
        }
        let role: Role = message.role == .tool ? .user : message.role
        if !rest.isEmpty || !toolCalls.isEmpty {
            var object = JSONObjectBuilder()
            object.set("role", role.rawValue)
            object.set("name", message.name)
            if rest.isEmpty {
                object.set("content", JSONValue.null)
            } else {
                object.set("content", renderContent(rest))
            }
            if !toolCalls.isEmpty { object.set("tool_calls", .array(toolCalls)) }
            output.append(object.value)
        }
        return output
    }

    static func renderContent(_ blocks: [ContentBlock]) -> JSONValue {
        if blocks.count == 1, case .text(let text, nil) = blocks[0] { return .string(text) }
        return .array(blocks.compactMap { block -> JSONValue? in
            switch block {
            case .text(let text, let cacheControl):
                var part = JSONObjectBuilder(["type": "text", "text": .string(text)])
                part.set("cache_control", cacheControl)
                return part.value
            case .image(.url(let url), _):
                return ["type": "image_url", "image_url": ["url": .string(url)]]
            case .image(.base64(let mediaType, let data), _):
                return ["type": "image_url", "image_url": ["url": .string("data:\(mediaType);base64,\(data)")]]
            case .raw(let value, .openAI):
                return value
            case .raw(_, .anthropic), .toolUse, .toolResult:
                return nil
            }
        })
    }

    // MARK: Responses

    /// Decodes a Chat Completions response body.
    public static func parseResponse(_ body: JSONValue) throws(InvalidRequest) -> ChatResponse {
        let root = try FieldReader(body, path: "")
        var choices: [ChatChoice] = []
        for (offset, rawChoice) in (try root.optionalArray("choices") ?? []).enumerated() {
            let choice = try FieldReader(rawChoice, path: "choices[\(offset)]")
            var content: [ContentBlock] = []
            if let message = try choice.object("message") {
                if let text = try message.optionalString("content") { content.append(.text(text)) }
                if let refusal = try message.optionalString("refusal"), content.isEmpty { content.append(.text(refusal)) }
                for (callOffset, rawCall) in (try message.optionalArray("tool_calls") ?? []).enumerated() {
                    let call = try FieldReader(rawCall, path: "\(message.child("tool_calls"))[\(callOffset)]")
                    let function = try call.object("function")
                    content.append(.toolUse(id: try call.optionalString("id") ?? "", name: try function?.optionalString("name") ?? "",
                                            arguments: try function?.optionalString("arguments") ?? "{}"))
                }
            }
            choices.append(ChatChoice(
                index: try choice.index("index") ?? offset, content: content,
                stopReason: try choice.optionalString("finish_reason").map(stopReason(fromFinishReason:)),
                logprobs: choice.value("logprobs")))
        }
        return ChatResponse(
            id: try root.optionalString("id") ?? "", model: try root.optionalString("model") ?? "",
            created: try root.optionalInt("created"), choices: choices,
            usage: try root.object("usage").map(parseUsage) ?? Usage(),
            systemFingerprint: try root.optionalString("system_fingerprint"))
    }

    /// Reads a usage object (`prompt_tokens` includes `cached_tokens`).
    public static func parseUsage(_ usage: JSONValue) throws(InvalidRequest) -> Usage {
        try parseUsage(FieldReader(usage, path: "usage"))
    }

    static func parseUsage(_ usage: FieldReader) throws(InvalidRequest) -> Usage {
        var clamped = false
        let prompt = try usage.tokenCount("prompt_tokens", clamped: &clamped) ?? 0
        var cached = try usage.object("prompt_tokens_details")?.tokenCount("cached_tokens", clamped: &clamped) ?? 0
        if cached > prompt {
            cached = prompt
            clamped = true
        }
        let output = try usage.tokenCount("completion_tokens", clamped: &clamped) ?? 0
        return Usage(inputTokens: prompt - cached, outputTokens: output, cacheReadTokens: cached, wasClamped: clamped)
    }

    static func stopReason(fromFinishReason reason: String) -> StopReason {
        switch reason {
        case "stop": .endTurn
        case "length": .maxTokens
        case "tool_calls", "function_call": .toolUse
        case "content_filter": .contentFilter
        default: .other(reason)
        }
    }

    static func finishReason(_ reason: StopReason) -> String {
        switch reason {
        case .endTurn, .stopSequence: "stop"
        case .maxTokens: "length"
        case .toolUse: "tool_calls"
        case .contentFilter: "content_filter"
        case .other(let other): other
        }
    }

    /// The usage object of the Chat Completions format.
    public static func renderUsage(_ usage: Usage) -> JSONValue {
        [
            "prompt_tokens": .int(Int64(usage.totalInputTokens)),
            "completion_tokens": .int(Int64(usage.outputTokens)),
            "total_tokens": .int(Int64(usage.totalInputTokens + usage.outputTokens)),
            "prompt_tokens_details": ["cached_tokens": .int(Int64(usage.cacheReadTokens))],
        ]
    }

    /// Encodes a canonical response as a Chat Completions body.
    public static func renderResponse(_ response: ChatResponse, created: Int64) -> JSONValue {
        var body = JSONObjectBuilder()
        body.set("id", response.id.hasPrefix("chatcmpl") ? response.id : "chatcmpl-\(response.id)")
        body.set("object", "chat.completion")
        body.set("created", .int(response.created ?? created))
        body.set("model", response.model)
        body.set("system_fingerprint", response.systemFingerprint)
        body.set("choices", .array(response.choices.map { choice in
            let texts = choice.content.compactMap(\.text)
            var message = JSONObjectBuilder(["role": "assistant"])
            message.set("content", texts.isEmpty ? JSONValue.null : .string(texts.joined()))
            let calls: [JSONValue] = choice.content.compactMap { block in
                guard case .toolUse(let id, let name, let arguments) = block else { return nil }
                return ["id": .string(id), "type": "function",
                        "function": ["name": .string(name), "arguments": .string(arguments)]]
            }
            if !calls.isEmpty { message.set("tool_calls", .array(calls)) }
            message.set("refusal", JSONValue.null)
            var object = JSONObjectBuilder(["index": .int(Int64(choice.index)), "message": message.value])
            object.set("finish_reason", choice.stopReason.map { JSONValue.string(finishReason($0)) } ?? .null)
            object.set("logprobs", choice.logprobs ?? .null)
            return object.value
        }))
        body.set("usage", renderUsage(response.usage))
        return body.value
    }

    // MARK: Streams

    /// Decodes one stream chunk (the JSON of one `data:` line) into canonical chunks.
    /// - Parameter started: Whether a `.start` was already produced for this stream.
    public static func parseChunk(_ body: JSONValue, started: inout Bool) throws(InvalidRequest) -> [ChatChunk] {
        let root = try FieldReader(body, path: "")
        var chunks: [ChatChunk] = []
        if !started {
            started = true
            chunks.append(.start(id: try root.optionalString("id") ?? "", model: try root.optionalString("model") ?? "",
                                 usage: nil))
        }
        for (offset, rawChoice) in (try root.optionalArray("choices") ?? []).enumerated() {
            let choice = try FieldReader(rawChoice, path: "choices[\(offset)]")
            let index = try choice.index("index") ?? 0
            if let delta = try choice.object("delta") {
                if let text = try delta.optionalString("content"), !text.isEmpty {
                    chunks.append(.text(choice: index, text))
                }
                for (callOffset, rawCall) in (try delta.optionalArray("tool_calls") ?? []).enumerated() {
                    let call = try FieldReader(rawCall, path: "\(delta.child("tool_calls"))[\(callOffset)]")
                    let callIndex = try call.index("index") ?? callOffset
                    let function = try call.object("function")
                    if let id = try call.optionalString("id") {
                        chunks.append(.toolCallStart(choice: index, index: callIndex, id: id,
                                                     name: try function?.optionalString("name") ?? ""))
                    }
                    if let arguments = try function?.optionalString("arguments"), !arguments.isEmpty {
                        chunks.append(.toolCallArguments(choice: index, index: callIndex, arguments))
                    }
                }
            }
            if let reason = try choice.optionalString("finish_reason") {
                chunks.append(.finish(choice: index, stopReason(fromFinishReason: reason)))
            }
        }
        if let usage = try root.object("usage") {
            chunks.append(.usage(try parseUsage(usage)))
        }
        return chunks
    }
}

/// Turns canonical chunks into Chat Completions stream chunks.
public struct OpenAIStreamEncoder: Sendable {
    var id: String
    let model: String
    let created: Int64
    let includeUsage: Bool
    var usage: Usage?

    /// - Parameters:
    ///   - includeUsage: Whether the client asked for the final usage chunk.
    public init(id: String, model: String, created: Int64, includeUsage: Bool) {
        self.id = id.hasPrefix("chatcmpl") ? id : "chatcmpl-\(id)"
        self.model = model
        self.created = created
        self.includeUsage = includeUsage
    }

    func chunk(choices: [JSONValue]) -> JSONValue {
        [
            "id": .string(id), "object": "chat.completion.chunk", "created": .int(created), "model": .string(model),
            "choices": .array(choices),
        ]
    }

    func choice(_ index: Int, delta: JSONValue, finish: String? = nil) -> JSONValue {
        ["index": .int(Int64(index)), "delta": delta, "finish_reason": finish.map { .string($0) } ?? .null]
    }

    /// The chunk objects (each one `data:` line) for one canonical chunk.
    public mutating func encode(_ chunk: ChatChunk) -> [JSONValue] {
        switch chunk {
        case .start(let upstreamID, _, _):
            if !upstreamID.isEmpty { id = upstreamID.hasPrefix("chatcmpl") ? upstreamID : "chatcmpl-\(upstreamID)" }
            return [self.chunk(choices: [choice(0, delta: ["role": "assistant", "content": ""])])]
        case .text(let index, let text):
            return [self.chunk(choices: [choice(index, delta: ["content": .string(text)])])]
        case .toolCallStart(let index, let call, let id, let name):
            let delta: JSONValue = ["tool_calls": [[
                "index": .int(Int64(call)), "id": .string(id), "type": "function",
                "function": ["name": .string(name), "arguments": ""],
            ]]]
            return [self.chunk(choices: [choice(index, delta: delta)])]
        case .toolCallArguments(let index, let call, let arguments):
            let delta: JSONValue = ["tool_calls": [["index": .int(Int64(call)), "function": ["arguments": .string(arguments)]]]]
            return [self.chunk(choices: [choice(index, delta: delta)])]
        case .finish(let index, let reason):
            return [self.chunk(choices: [choice(index, delta: [:], finish: OpenAIFormat.finishReason(reason))])]
        case .usage(let usage):
            self.usage = usage
            return []
        }
    }

    /// The chunks that close the stream (the usage chunk, when asked for); `[DONE]` is written by the caller.
    public func finish() -> [JSONValue] {
        guard includeUsage, let usage else { return [] }
        var last = chunk(choices: [])
        if case .object(var members) = last {
            members["usage"] = OpenAIFormat.renderUsage(usage)
            last = .object(members)
        }
        return [last]
    }
}
