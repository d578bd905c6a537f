/// What the mock will answer to one request: decided up front, deterministically, from the request.
struct MockPlan {
    struct Event {
        var name: String?
        /// `nil` for OpenAI's `[DONE]`.
        var json: MockJSON?
        /// Whether the latency model spends one token interval before this event.
        var isToken: Bool
    }

    let model: MockModel
    let id: String
    let promptTokens: Int
    let words: [String]
    let toolCall: (id: String, name: String, arguments: String)?
    let hitLimit: Bool
    /// Drawn from the model's distribution with this request's generator.
    let timeToFirstToken: Duration
    /// Seeds the inter-token intervals (`tokenIntervals()`), so that a repeated request repeats its timing.
    let timingSeed: UInt64
    /// Prompt tokens served from the simulated prompt cache, and (Anthropic) written to it.
    var cacheRead = 0
    var cacheWrite = 0

    init(request: MockJSON, model: MockModel, anthropic: Bool, lengthTrace: MockLengthTrace? = nil,
         recorded: MockRecordedAnswers? = nil) {
        self.model = model
        var strings: [String] = []
        request["system"]?.collectStrings(into: &strings)
        request["messages"]?.collectStrings(into: &strings)
        let messageCount = request["messages"]?.array?.count ?? 0
        var toolStrings: [String] = []
        request["tools"]?.collectStrings(into: &toolStrings)
        self.promptTokens = strings.reduce(0) { $0 + MockText.countTokens($1) } + 3 * messageCount
            + toolStrings.reduce(0) { $0 + MockText.countTokens($1) }
        // The words depend on the model and the prompt's text only: the same question asked in either API, or in
        // either JSON shape, gets the same answer.
        var text: [String] = []
        request["system"]?.collectText(into: &text)
        request["messages"]?.collectText(into: &text)
        // The model name and the texts joined by NUL bytes, hashed as they are walked: no copy of a long prompt.
        let seedSource = ([model.name] + text).lazy.map(\.utf8).joined(separator: [0])
        var rng = SplitMix64(seed: request["seed"]?.seedBits ?? SplitMix64.hash(seedSource))
        self.id = String(rng.next() % 1_000_000_000_000, radix: 36)
        self.timeToFirstToken = .seconds(model.timeToFirstToken.sample(&rng))
        self.timingSeed = rng.next()
        let maxTokens = request["max_completion_tokens"]?.boundedInt ?? request["max_tokens"]?.boundedInt

        // A tool call when tools are offered and the conversation does not end in a tool result.
        let lastMessage = request["messages"]?.array?.last
        let endsInToolResult = lastMessage?["role"]?.string == "tool"
            || (lastMessage?["content"]?.array?.contains { $0["type"]?.string == "tool_result" } ?? false)
        let disabled = request["tool_choice"]?.string == "none" || request["tool_choice"]?["type"]?.string == "none"
        if let tools = request["tools"]?.array, let first = tools.first, !endsInToolResult, !disabled {
            let forced = request["tool_choice"]?["function"]?["name"]?.string ?? request["tool_choice"]?["name"]?.string
            let name = forced ?? first["function"]?["name"]?.string ?? first["name"]?.string ?? "tool"
            let tool = tools.first { ($0["function"]?["name"]?.string ?? $0["name"]?.string) == name } ?? first
            let schema = tool["function"]?["parameters"] ?? tool["input_schema"]
            var arguments: [String: MockJSON] = [:]
            if case .object(let properties)? = schema?["properties"] {
                for key in properties.keys.sorted() {
                    switch properties[key]?["type"]?.string {
                    case "number", "integer": arguments[key] = .number(Double(rng.next(in: 1...100)))
                    case "boolean": arguments[key] = .bool(rng.next() % 2 == 0)
                    default: arguments[key] = .string(MockText.words(count: 2, rng: &rng).joined(separator: " "))
                    }
                }
            }
            let text = (try? MockJSONText.encode(.object(arguments))) ?? "{}"
            self.toolCall = ("call_\(String(rng.next() % 1_000_000_000, radix: 36))", name, text)
            self.words = []
            self.hitLimit = false
        } else if let answer = recorded?.answer(for: request, tier: model.tier) {
            // Split on single spaces only, so that joining the words with spaces gives the recorded text back.
            let words = answer.split(separator: " ", omittingEmptySubsequences: false).map(String.init)
            let count = min(words.count, maxTokens ?? words.count)
            self.words = Array(words.prefix(max(count, 0)))
            self.toolCall = nil
            self.hitLimit = count < words.count
        } else {
            let length = lengthTrace?.draw(&rng) ?? max(1, Int(model.outputTokens.sample(&rng).rounded()))
            let count = max(0, min(length, maxTokens ?? length))
            self.words = MockText.words(count: count, rng: &rng)
            self.toolCall = nil
            self.hitLimit = count < length
        }
    }

    /// The pauses before each output token after the first, drawn from the model's inter-token distribution.
    func tokenIntervals() -> [Duration] {
        var rng = SplitMix64(seed: timingSeed)
        return (0..<max(0, outputTokens - 1)).map { _ in .seconds(model.interTokenLatency.sample(&rng)) }
    }

    var outputTokens: Int {
        if let toolCall { return MockText.countTokens(toolCall.arguments) + 1 }
        return words.count
    }

    var text: String { words.joined(separator: " ") }

    /// Text deltas: one word per token.
    var deltas: [String] { words.enumerated().map { $0.offset == 0 ? $0.element : " " + $0.element } }

    // MARK: OpenAI

    var openAIFinishReason: String { toolCall != nil ? "tool_calls" : hitLimit ? "length" : "stop" }

    var openAIUsage: MockJSON {
        .object([
            "prompt_tokens": .number(Double(promptTokens)), "completion_tokens": .number(Double(outputTokens)),
            "total_tokens": .number(Double(promptTokens + outputTokens)),
            "prompt_tokens_details": .object(["cached_tokens": .number(Double(cacheRead / 128 * 128))]),
        ])
    }

    func openAICompletion() -> MockJSON {
        var message: [String: MockJSON] = ["role": "assistant", "content": toolCall == nil ? .string(text) : .null, "refusal": .null]
        if let toolCall {
            message["tool_calls"] = .array([.object([
                "id": .string(toolCall.id), "type": "function",
                "function": .object(["name": .string(toolCall.name), "arguments": .string(toolCall.arguments)]),
            ])])
        }
        return .object([
            "id": .string("chatcmpl-mock\(id)"), "object": "chat.completion", "created": 1_767_225_600,
            "model": .string(model.name), "system_fingerprint": "fp_mock",
            "choices": .array([.object(["index": 0, "message": .object(message), "logprobs": .null,
                                        "finish_reason": .string(openAIFinishReason)])]),
            "usage": openAIUsage,
        ])
    }

    func openAIChunks(includeUsage: Bool) -> [Event] {
        func chunk(_ delta: MockJSON, finish: String? = nil, usage: MockJSON? = nil, empty: Bool = false) -> MockJSON {
            var object: [String: MockJSON] = [
                "id": .string("chatcmpl-mock\(id)"), "object": "chat.completion.chunk", "created": 1_767_225_600,
                "model": .string(model.name), "system_fingerprint": "fp_mock",
                "choices": empty ? .array([]) : .array([.object(["index": 0, "delta": delta, "logprobs": .null,
                                                                 "finish_reason": finish.map { .string($0) } ?? .null])]),
            ]
            if includeUsage { object["usage"] = usage ?? .null }
            return .object(object)
        }
        var events = [Event(json: chunk(.object(["role": "assistant", "content": "", "refusal": .null])), isToken: false)]
        if let toolCall {
            events.append(Event(json: chunk(.object(["tool_calls": .array([.object([
                "index": 0, "id": .string(toolCall.id), "type": "function",
                "function": .object(["name": .string(toolCall.name), "arguments": ""]),
            ])])])), isToken: true))
            for piece in Self.split(toolCall.arguments, parts: 3) {
                events.append(Event(json: chunk(.object(["tool_calls": .array([.object([
                    "index": 0, "function": .object(["arguments": .string(piece)]),
                ])])])), isToken: true))
            }
        } else {
            for delta in deltas { events.append(Event(json: chunk(.object(["content": .string(delta)])), isToken: true)) }
        }
        events.append(Event(json: chunk(.object([:]), finish: openAIFinishReason), isToken: false))
        if includeUsage { events.append(Event(json: chunk(.object([:]), usage: openAIUsage, empty: true), isToken: false)) }
        events.append(Event(json: nil, isToken: false))
        return events
    }

    static func split(_ text: String, parts: Int) -> [String] {
        let characters = Array(text)
        let size = max(1, (characters.count + parts - 1) / parts)
        return stride(from: 0, to: characters.count, by: size).map { String(characters[$0..<min($0 + size, characters.count)]) }
    }

    // MARK: Anthropic

    var anthropicStopReason: String { toolCall != nil ? "tool_use" : hitLimit ? "max_tokens" : "end_turn" }

    func anthropicUsage(output: Int) -> MockJSON {
        .object([
            "input_tokens": .number(Double(promptTokens - cacheRead - cacheWrite)), "output_tokens": .number(Double(output)),
            "cache_creation_input_tokens": .number(Double(cacheWrite)), "cache_read_input_tokens": .number(Double(cacheRead)),
        ])
    }

    func anthropicContent() -> [MockJSON] {
        if let toolCall {
            let input = (try? MockJSONText.decode(toolCall.arguments)) ?? .object([:])
            return [.object(["type": "tool_use", "id": .string("toolu_\(toolCall.id)"), "name": .string(toolCall.name), "input": input])]
        }
        return [.object(["type": "text", "text": .string(text)])]
    }

    func anthropicMessage() -> MockJSON {
        .object([
            "id": .string("msg_mock\(id)"), "type": "message", "role": "assistant", "model": .string(model.name),
            "content": .array(anthropicContent()), "stop_reason": .string(anthropicStopReason), "stop_sequence": .null,
            "usage": anthropicUsage(output: outputTokens),
        ])
    }

    func anthropicEvents() -> [Event] {
        var events = [Event(name: "message_start", json: .object([
            "type": "message_start",
            "message": .object([
                "id": .string("msg_mock\(id)"), "type": "message", "role": "assistant", "model": .string(model.name),
                "content": .array([]), "stop_reason": .null, "stop_sequence": .null, "usage": anthropicUsage(output: 1),
            ]),
        ]), isToken: false)]
        if let toolCall {
            events.append(Event(name: "content_block_start", json: .object([
                "type": "content_block_start", "index": 0,
                "content_block": .object(["type": "tool_use", "id": .string("toolu_\(toolCall.id)"), "name": .string(toolCall.name), "input": .object([:])]),
            ]), isToken: false))
            events.append(Event(name: "ping", json: .object(["type": "ping"]), isToken: false))
            for piece in Self.split(toolCall.arguments, parts: 3) {
                events.append(Event(name: "content_block_delta", json: .object([
                    "type": "content_block_delta", "index": 0,
                    "delta": .object(["type": "input_json_delta", "partial_json": .string(piece)]),
                ]), isToken: true))
            }
        } else {
            events.append(Event(name: "content_block_start", json: .object([
                "type": "content_block_start", "index": 0, "content_block": .object(["type": "text", "text": ""]),
            ]), isToken: false))
            events.append(Event(name: "ping", json: .object(["type": "ping"]), isToken: false))
            for delta in deltas {
                events.append(Event(name: "content_block_delta", json: .object([
                    "type": "content_block_delta", "index": 0, "delta": .object(["type": "text_delta", "text": .string(delta)]),
                ]), isToken: true))
            }
        }
        events.append(Event(name: "content_block_stop", json: .object(["type": "content_block_stop", "index": 0]), isToken: false))
        events.append(Event(name: "message_delta", json: .object([
            "type": "message_delta",
            "delta": .object(["stop_reason": .string(anthropicStopReason), "stop_sequence": .null]),
            "usage": .object(["output_tokens": .number(Double(outputTokens))]),
        ]), isToken: false))
        events.append(Event(name: "message_stop", json: .object(["type": "message_stop"]), isToken: false))
        return events
    }
}

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

enum MockJSONText {
    static func encode(_ value: MockJSON) throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return String(decoding: try encoder.encode(value), as: UTF8.self)
    }

    static func decode(_ text: String) throws -> MockJSON {
        try JSONDecoder().decode(MockJSON.self, from: Data(text.utf8))
    }
}
