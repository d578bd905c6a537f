/// The Anthropic Messages wire format: requests, responses and stream events to and from canonical form.
public enum AnthropicFormat {
    static let knownRequestKeys: Set<String> = [
        "model", "messages", "system", "max_tokens", "stop_sequences", "temperature", "top_p", "top_k", "tools",
        "tool_choice", "metadata", "stream",
    ]

    // MARK: Requests

    /// Decodes and validates a Messages request body.
    /// - Throws: `InvalidRequest` naming the key path.
    public static func parseRequest(_ body: JSONValue) throws(InvalidRequest) -> ChatRequest {
        let root = try FieldReader(body, path: "")
        let model = try root.string("model")
        guard !model.isEmpty else { throw InvalidRequest(path: "model", "must not be empty") }
        guard let maxTokens = try root.optionalInt("max_tokens", in: 1...Int64(Int32.max)) else {
            throw InvalidRequest(path: "max_tokens", "is required")
        }
        let rawMessages = try root.array("messages")
        guard !rawMessages.isEmpty else { throw InvalidRequest(path: "messages", "must contain at least one message") }
        var messages: [ChatMessage] = []
        for (offset, raw) in rawMessages.enumerated() {
            let message = try FieldReader(raw, path: "messages[\(offset)]")
            let role: Role
            switch try message.string("role") {
            case "user": role = .user
            case "assistant": role = .assistant
            default: throw InvalidRequest(path: message.child("role"), "must be 'user' or 'assistant'")
            }
            guard let content = message.value("content") else {
                throw InvalidRequest(path: message.child("content"), "is required")
            }
            messages.append(ChatMessage(role: role, content: try parseContent(content, path: message.child("content"))))
        }
        var system: [ContentBlock] = []
        if let rawSystem = root.value("system") {
            system = try parseContent(rawSystem, path: "system")
            guard system.allSatisfy({ $0.text != nil }) else {
                throw InvalidRequest(path: "system", "must be a string or an array of text blocks")
            }
        }
        var tools: [ToolDefinition] = []
        for (offset, raw) in (try root.optionalArray("tools") ?? []).enumerated() {
            let tool = try FieldReader(raw, path: "tools[\(offset)]")
            if let type = try tool.optionalString("type"), type != "custom" {
                throw InvalidRequest(path: tool.child("type"), "server tools ('\(type)') are not supported by this gateway")
            }
            guard let schema = tool.value("input_schema") else {
                throw InvalidRequest(path: tool.child("input_schema"), "is required")
            }
            tools.append(ToolDefinition(name: try tool.string("name"), description: try tool.optionalString("description"),
                                        inputSchema: schema, cacheControl: tool.value("cache_control")))
        }
        var toolChoice: ToolChoice?
        var parallelToolCalls: Bool?
        if let choice = try root.object("tool_choice") {
            switch try choice.string("type") {
            case "auto": toolChoice = .auto
            case "any": toolChoice = .required
            case "none": toolChoice = .disabled
            case "tool": toolChoice = .tool(try choice.string("name"))
            default: throw InvalidRequest(path: "tool_choice.type", "must be 'auto', 'any', 'tool' or 'none'")
            }
            if try choice.optionalBool("disable_parallel_tool_use") == true { parallelToolCalls = false }
        }
        return ChatRequest(
            model: model, system: system, messages: messages, tools: tools, toolChoice: toolChoice,
            parallelToolCalls: parallelToolCalls, maxTokens: maxTokens.asInt,
            temperature: try root.optionalDouble("temperature", in: 0...1),
            topP: try root.optionalDouble("top_p", in: 0...1),
            topK: try root.optionalInt("top_k", in: 0...Int64(Int32.max))?.asInt,
            stop: try root.stringOrStrings("stop_sequences"),
            user: try root.object("metadata")?.optionalString("user_id"),
            stream: try root.optionalBool("stream") ?? false,
            streamIncludeUsage: true,
            sourceFormat: .anthropic,
            extras: root.extras(excluding: knownRequestKeys))
    }

    static func parseContent(_ value: JSONValue, path: String) throws(InvalidRequest) -> [ContentBlock] {
        switch value {
        case .string(let text): return [.text(text)]
        case .array(let rawBlocks):
            var blocks: [ContentBlock] = []
            for (offset, rawBlock) in rawBlocks.enumerated() {
                blocks.append(try parseBlock(rawBlock, path: "\(path)[\(offset)]"))
            }
            return blocks
        default:
            throw InvalidRequest(path: path, "expected a string or an array of content blocks, got \(value.typeName)")
        }
    }

    static func parseBlock(_ raw: JSONValue, path: String) throws(InvalidRequest) -> ContentBlock {
        let block = try FieldReader(raw, path: path)
        switch try block.string("type") {
        case "text":
            return .text(try block.string("text"), cacheControl: block.value("cache_control"))
        case "image":
            guard let source = try block.object("source") else { throw InvalidRequest(path: block.child("source"), "is required") }
            let image: ImageSource
            switch try source.string("type") {
            case "base64": image = .base64(mediaType: try source.string("media_type"), data: try source.string("data"))
            case "url": image = .url(try source.string("url"))
            default: return .raw(raw, format: .anthropic)
            }
            return .image(image, cacheControl: block.value("cache_control"))
        case "tool_use":
            let input = block.value("input") ?? [:]
            return .toolUse(id: try block.string("id"), name: try block.string("name"), arguments: input.jsonString())
        case "tool_result":
            var content: [ContentBlock] = []
            if let rawContent = block.value("content") {
                content = try parseContent(rawContent, path: block.child("content"))
            }
            return .toolResult(toolUseID: try block.string("tool_use_id"), content: content,
                               isError: try block.optionalBool("is_error") ?? false, cacheControl: block.value("cache_control"))
        default:
            return .raw(raw, format: .anthropic)
        }
    }

    /// Encodes a canonical request as a Messages body for `upstreamModel`.
    /// - Parameter defaultMaxTokens: Used when an OpenAI client gave no limit (Anthropic requires one).
    /// - Throws: `InvalidRequest` when the request uses what the Messages API cannot express.
    public static func renderRequest(_ request: ChatRequest, upstreamModel: String, defaultMaxTokens: Int = 4096)
        throws(InvalidRequest) -> JSONValue
    {
        if let n = request.n, n > 1 {
            throw InvalidRequest(path: "n", "must be 1 for model '\(request.model)' (an Anthropic model)")
        }
        if request.logprobs == true {
            throw InvalidRequest(path: "logprobs", "is not supported by model '\(request.model)' (an Anthropic model)")
        }
        var body = JSONObjectBuilder(request.sourceFormat == .anthropic ? request.extras : [:])
        body.set("model", upstreamModel)
        body.set("max_tokens", request.maxTokens ?? defaultMaxTokens)
        var system = request.system
        var messages: [JSONValue] = []
        var pendingUser: [JSONValue] = []
        func flushUser() {
            if !pendingUser.isEmpty {
                messages.append(["role": "user", "content": .array(pendingUser)])
                pendingUser = []
            }
        }
        for (offset, message) in request.messages.enumerated() {
            switch message.role {
            case .system, .developer:
                system.append(contentsOf: message.content.filter { $0.text != nil })
            case .user, .tool:
                // Consecutive user-side turns (an OpenAI client's tool results) become one user message.
                let blocks = try renderBlocks(message.content, path: "messages[\(offset)].content")
                let results = blocks.filter { $0["type"] == "tool_result" }
                pendingUser.insert(contentsOf: results, at: pendingUser.firstIndex { $0["type"] != "tool_result" } ?? pendingUser.count)
                pendingUser.append(contentsOf: blocks.filter { $0["type"] != "tool_result" })
            case .assistant:
                flushUser()
                let blocks = try renderBlocks(message.content, path: "messages[\(offset)].content")
                messages.append(["role": "assistant", "content": .array(blocks)])
            }
        }
        flushUser()
        if !system.isEmpty {
            if system.count == 1, case .text(let text, nil) = system[0] {
                body.set("system", .string(text))
            } else {
                body.set("system", .array(try renderBlocks(system, path: "system")))
            }
        }
        body.set("messages", .array(messages))
        if !request.tools.isEmpty {
            body.set("tools", .array(request.tools.map { tool in
                var object = JSONObjectBuilder(["name": .string(tool.name), "input_schema": tool.inputSchema])
                object.set("description", tool.description)
                object.set("cache_control", tool.cacheControl)
                return object.value
            }))
        }
        var toolChoice: JSONObjectBuilder?
        switch request.toolChoice {
        case .auto: toolChoice = JSONObjectBuilder(["type": "auto"])
        case .disabled: toolChoice = JSONObjectBuilder(["type": "none"])
        case .required: toolChoice = JSONObjectBuilder(["type": "any"])
        case .tool(let name): toolChoice = JSONObjectBuilder(["type": "tool", "name": .string(name)])
        case nil: if request.parallelToolCalls == false, !request.tools.isEmpty { toolChoice = JSONObjectBuilder(["type": "auto"]) }
        }
        if request.parallelToolCalls == false, request.toolChoice != .disabled {
            toolChoice?.set("disable_parallel_tool_use", true)
        }
        body.set("tool_choice", toolChoice?.value)
        // OpenAI allows temperatures up to 2; the Messages API up to 1.
        body.set("temperature", request.temperature.map { min($0, 1) })
        body.set("top_p", request.topP)
        body.set("top_k", request.topK)
        if !request.stop.isEmpty { body.set("stop_sequences", .array(request.stop.map { .string($0) })) }
        if let user = request.user { body.set("metadata", ["user_id": .string(user)] as JSONValue) }
        if request.stream { body.set("stream", true) }
        return body.value
    }

    static func renderBlocks(_ blocks: [ContentBlock], path: String) throws(InvalidRequest) -> [JSONValue] {
        var output: [JSONValue] = []
        for (offset, block) in blocks.enumerated() {
            switch block {
            case .text(let text, let cacheControl):
                var object = JSONObjectBuilder(["type": "text", "text": .string(text)])
                object.set("cache_control", cacheControl)
                output.append(object.value)
            case .image(let source, let cacheControl):
                let sourceValue: JSONValue = switch source {
                case .url(let url): ["type": "url", "url": .string(url)]
                case .base64(let mediaType, let data): ["type": "base64", "media_type": .string(mediaType), "data": .string(data)]
                }
                var object = JSONObjectBuilder(["type": "image", "source": sourceValue])
                object.set("cache_control", cacheControl)
                output.append(object.value)
            case .toolUse(let id, let name, let arguments):
                let input: JSONValue
                do {
                    input = try JSONValue.parse(arguments)
                } catch {
                    throw InvalidRequest(path: "\(path)[\(offset)]", "tool call arguments are not valid JSON")
                }
                output.append(["type": "tool_use", "id": .string(id), "name": .string(name), "input": input])
            case .toolResult(let id, let content, let isError, let cacheControl):
                var object = JSONObjectBuilder(["type": "tool_result", "tool_use_id": .string(id)])
                object.set("content", .array(try renderBlocks(content, path: "\(path)[\(offset)].content")))
                if isError { object.set("is_error", true) }
                object.set("cache_control", cacheControl)
                output.append(object.value)
            case .raw(let value, .anthropic):
                output.append(value)
            case .raw(_, .openAI):
                throw InvalidRequest(path: "\(path)[\(offset)]", "this content part type cannot be sent to an Anthropic model")
            }
        }
        return output
    }

    // MARK: Responses

    static func stopReason(_ reason: String, sequence: String?) -> StopReason {
        switch reason {
        case "end_turn", "pause_turn": .endTurn
        case "max_tokens", "model_context_window_exceeded": .maxTokens
        case "stop_sequence": .stopSequence(sequence)
        case "tool_use": .toolUse
        case "refusal": .contentFilter
        default: .other(reason)
        }
    }

    static func stopReasonName(_ reason: StopReason) -> (String, String?) {
        switch reason {
        case .endTurn: ("end_turn", nil)
        case .maxTokens: ("max_tokens", nil)
        case .stopSequence(let sequence): (sequence == nil ? "end_turn" : "stop_sequence", sequence)
        case .toolUse: ("tool_use", nil)
        case .contentFilter: ("refusal", nil)
        case .other(let other): (other, nil)
        }
    }

    /// Reads a usage object (`input_tokens` excludes cache reads and writes).
    public static func parseUsage(_ usage: JSONValue) throws(InvalidRequest) -> Usage {
        try parseUsage(FieldReader(usage, path: "usage"))
    }

    static func parseUsage(_ usage: FieldReader) throws(InvalidRequest) -> Usage {
        var result = Usage()
        try update(&result, from: usage)
        return result
    }

    /// Overwrites the counts `usage` reports (a stream's `message_delta` carries only some), each clamped to
    /// `0...Usage.maximumTokens`.
    static func update(_ result: inout Usage, from usage: FieldReader) throws(InvalidRequest) {
        var clamped = result.wasClamped
        if let input = try usage.tokenCount("input_tokens", clamped: &clamped) { result.inputTokens = input }
        if let output = try usage.tokenCount("output_tokens", clamped: &clamped) { result.outputTokens = output }
        if let read = try usage.tokenCount("cache_read_input_tokens", clamped: &clamped) { result.cacheReadTokens = read }
        if let write = try usage.tokenCount("cache_creation_input_tokens", clamped: &clamped) { result.cacheWriteTokens = write }
        result.wasClamped = clamped
    }

    /// The usage object of the Messages format.
    public static func renderUsage(_ usage: Usage) -> JSONValue {
        [
            "input_tokens": .int(Int64(usage.inputTokens)), "output_tokens": .int(Int64(usage.outputTokens)),
            "cache_read_input_tokens": .int(Int64(usage.cacheReadTokens)),
            "cache_creation_input_tokens": .int(Int64(usage.cacheWriteTokens)),
        ]
    }

    /// Decodes a Messages response body.
    public static func parseResponse(_ body: JSONValue) throws(InvalidRequest) -> ChatResponse {
        let root = try FieldReader(body, path: "")
        var content: [ContentBlock] = []
        for (offset, raw) in (try root.optionalArray("content") ?? []).enumerated() {
            let block = try FieldReader(raw, path: "content[\(offset)]")
            switch try block.string("type") {
            case "text": content.append(.text(try block.string("text")))
            case "tool_use":
                content.append(.toolUse(id: try block.string("id"), name: try block.string("name"),
                                        arguments: (block.value("input") ?? [:]).jsonString()))
            default: content.append(.raw(raw, format: .anthropic))
            }
        }
        let stop = try root.optionalString("stop_reason").map {
            stopReason($0, sequence: try? root.optionalString("stop_sequence"))
        }
        return ChatResponse(id: try root.optionalString("id") ?? "", model: try root.optionalString("model") ?? "",
                            choices: [ChatChoice(content: content, stopReason: stop)],
                            usage: try root.object("usage").map(parseUsage) ?? Usage())
    }

    /// Encodes a canonical response (its first choice) as a Messages body.
    public static func renderResponse(_ response: ChatResponse) -> JSONValue {
        let choice = response.choices.first
        var content: [JSONValue] = []
        for block in choice?.content ?? [] {
            switch block {
            case .text(let text, _): content.append(["type": "text", "text": .string(text)])
            case .toolUse(let id, let name, let arguments):
                let input = (try? JSONValue.parse(arguments)) ?? [:]
                content.append(["type": "tool_use", "id": .string(id), "name": .string(name), "input": input])
            case .raw(let value, .anthropic): content.append(value)
            default: break
            }
        }
        let (reason, sequence) = choice?.stopReason.map(stopReasonName) ?? ("end_turn", nil)
        return [
            "id": .string(response.id.hasPrefix("msg_") ? response.id : "msg_\(response.id)"),
            "type": "message", "role": "assistant", "model": .string(response.model), "content": .array(content),
            "stop_reason": .string(reason), "stop_sequence": sequence.map { .string($0) } ?? .null,
            "usage": renderUsage(response.usage),
        ]
    }
}

/// An `error` event inside an upstream stream.
public struct UpstreamStreamError: Error, Sendable, Hashable {
    /// The provider's error type, such as `overloaded_error`.
    public var type: String
    public var message: String

    public init(type: String, message: String) {
        self.type = type
        self.message = message
    }
}

/// Decodes Messages stream events into canonical chunks, keeping the state the format needs.
public struct AnthropicStreamParser: Sendable {
    var toolIndexForBlock: [Int: Int] = [:]
    var nextToolIndex = 0
    var usage = Usage()

    public init() {}

    /// Decodes the JSON data of one event.
    /// - Throws: `UpstreamStreamError` for an `error` event, `InvalidRequest` for a malformed one.
    public mutating func parse(_ data: JSONValue) throws -> [ChatChunk] {
        let event = try FieldReader(data, path: "")
        switch try event.optionalString("type") ?? "" {
        case "message_start":
            guard let message = try event.object("message") else { return [] }
            if let rawUsage = try message.object("usage") { usage = try AnthropicFormat.parseUsage(rawUsage) }
            return [.start(id: try message.optionalString("id") ?? "", model: try message.optionalString("model") ?? "",
                           usage: usage)]
        case "content_block_start":
            let index = try event.index("index") ?? 0
            guard let block = try event.object("content_block") else { return [] }
            switch try block.optionalString("type") {
            case "tool_use":
                let toolIndex = nextToolIndex
                nextToolIndex += 1
                toolIndexForBlock[index] = toolIndex
                return [.toolCallStart(choice: 0, index: toolIndex, id: try block.optionalString("id") ?? "",
                                       name: try block.optionalString("name") ?? "")]
            case "text":
                if let text = try block.optionalString("text"), !text.isEmpty { return [.text(choice: 0, text)] }
                return []
            default: return []
            }
        case "content_block_delta":
            let index = try event.index("index") ?? 0
            guard let delta = try event.object("delta") else { return [] }
            switch try delta.optionalString("type") {
            case "text_delta":
                return [.text(choice: 0, try delta.optionalString("text") ?? "")]
            case "input_json_delta":
                guard let toolIndex = toolIndexForBlock[index] else { return [] }
                let partial = try delta.optionalString("partial_json") ?? ""
                return partial.isEmpty ? [] : [.toolCallArguments(choice: 0, index: toolIndex, partial)]
            default: return []
            }
        case "message_delta":
            var chunks: [ChatChunk] = []
            if let delta = try event.object("delta"), let reason = try delta.optionalString("stop_reason") {
                chunks.append(.finish(choice: 0, AnthropicFormat.stopReason(reason, sequence: try delta.optionalString("stop_sequence"))))
            }
            if let rawUsage = try event.object("usage") {
                // message_delta carries cumulative output tokens and, in newer versions, the input counts too.
                try AnthropicFormat.update(&usage, from: rawUsage)
                chunks.append(.usage(usage))
            }
            return chunks
        case "error":
            let error = try event.object("error")
            throw UpstreamStreamError(type: try error?.optionalString("type") ?? "api_error",
                                      message: try error?.optionalString("message") ?? "upstream stream error")
        default:
            return []
        }
    }
}

/// Turns canonical chunks into Messages stream events (`event:` name and JSON data), in the real sequence.
public struct AnthropicStreamEncoder: Sendable {
    enum OpenBlock: Equatable { case text, tool(Int) }

    var started = false
    var openBlock: (index: Int, kind: OpenBlock)?
    var nextBlockIndex = 0
    var stopReason: StopReason?
    var usage = Usage()
    let fallbackID: String
    let fallbackModel: String

    public init(id: String, model: String) {
        self.fallbackID = id
        self.fallbackModel = model
    }

    public typealias Event = (name: String, data: JSONValue)

    mutating func start(id: String, model: String, usage: Usage?, into events: inout [Event]) {
        guard !started else { return }
        started = true
        if let usage { self.usage = usage }
        var startUsage = self.usage
        startUsage.outputTokens = max(startUsage.outputTokens, 1)
        events.append(("message_start", [
            "type": "message_start",
            "message": [
                "id": .string(id.hasPrefix("msg_") ? id : "msg_\(id)"), "type": "message", "role": "assistant",
                "model": .string(model), "content": [], "stop_reason": nil, "stop_sequence": nil,
                "usage": AnthropicFormat.renderUsage(startUsage),
            ],
        ]))
    }

    mutating func closeBlock(into events: inout [Event]) {
        guard let block = openBlock else { return }
        events.append(("content_block_stop", ["type": "content_block_stop", "index": .int(Int64(block.index))]))
        openBlock = nil
    }

    mutating func openBlock(_ kind: OpenBlock, contentBlock: JSONValue, into events: inout [Event]) {
        closeBlock(into: &events)
        let index = nextBlockIndex
        nextBlockIndex += 1
        openBlock = (index, kind)
        events.append(("content_block_start", [
            "type": "content_block_start", "index": .int(Int64(index)), "content_block": contentBlock,
        ]))
        if index == 0 { events.append(("ping", ["type": "ping"])) }
    }

    /// The events for one canonical chunk (only the first choice is rendered).
    public mutating func encode(_ chunk: ChatChunk) -> [Event] {
        var events: [Event] = []
        switch chunk {
        case .start(let id, let model, let usage):
            start(id: id, model: model, usage: usage, into: &events)
        case .text(let choice, let text):
            guard choice == 0 else { break }
            start(id: fallbackID, model: fallbackModel, usage: nil, into: &events)
            if openBlock?.kind != .text {
                openBlock(.text, contentBlock: ["type": "text", "text": ""], into: &events)
            }
            events.append(("content_block_delta", [
                "type": "content_block_delta", "index": .int(Int64(openBlock!.index)),
                "delta": ["type": "text_delta", "text": .string(text)],
            ]))
        case .toolCallStart(let choice, let index, let id, let name):
            guard choice == 0 else { break }
            start(id: fallbackID, model: fallbackModel, usage: nil, into: &events)
            openBlock(.tool(index), contentBlock: ["type": "tool_use", "id": .string(id), "name": .string(name), "input": [:]],
                      into: &events)
        case .toolCallArguments(let choice, let index, let arguments):
            guard choice == 0, let block = openBlock, block.kind == .tool(index) else { break }
            events.append(("content_block_delta", [
                "type": "content_block_delta", "index": .int(Int64(block.index)),
                "delta": ["type": "input_json_delta", "partial_json": .string(arguments)],
            ]))
        case .finish(let choice, let reason):
            if choice == 0 { stopReason = reason }
        case .usage(let usage):
            self.usage = usage
        }
        return events
    }

    /// The events that close the message: the open block's stop, `message_delta` with the final usage, `message_stop`.
    public mutating func finish() -> [Event] {
        var events: [Event] = []
        start(id: fallbackID, model: fallbackModel, usage: nil, into: &events)
        closeBlock(into: &events)
        let (reason, sequence) = stopReason.map(AnthropicFormat.stopReasonName) ?? ("end_turn", nil)
        events.append(("message_delta", [
            "type": "message_delta",
            "delta": ["stop_reason": .string(reason), "stop_sequence": sequence.map { .string($0) } ?? .null],
            "usage": AnthropicFormat.renderUsage(usage),
        ]))
        events.append(("message_stop", ["type": "message_stop"]))
        return events
    }
}
