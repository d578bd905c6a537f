/// The two wire formats Switchyard speaks to clients and to upstreams.
public enum APIFormat: String, Sendable, Hashable, CaseIterable {
    /// OpenAI Chat Completions.
    case openAI = "openai"
    /// Anthropic Messages.
    case anthropic
}

/// Token counts in canonical semantics: `inputTokens` excludes cached reads and cache writes.
///
/// OpenAI's `prompt_tokens` includes `cached_tokens`; Anthropic's `input_tokens` excludes
/// `cache_read_input_tokens` and `cache_creation_input_tokens`. Both are converted to this form.
public struct Usage: Sendable, Hashable {
    /// Input tokens billed at the plain input rate.
    public var inputTokens: Int
    /// Output tokens.
    public var outputTokens: Int
    /// Input tokens read from the provider's prompt cache.
    public var cacheReadTokens: Int
    /// Input tokens written to the provider's prompt cache.
    public var cacheWriteTokens: Int

    /// Whether an upstream reported a count out of range (negative, over `maximumTokens`, or cached tokens over the
    /// prompt) that parsing clamped: counted as an upstream anomaly.
    public var wasClamped: Bool

    /// The most tokens one bucket of one answer can hold. Upstream counts are clamped to `0...maximumTokens` when
    /// parsed, so sums and prices of a few buckets never overflow.
    public static let maximumTokens = 1 << 31

    public init(inputTokens: Int = 0, outputTokens: Int = 0, cacheReadTokens: Int = 0, cacheWriteTokens: Int = 0,
                wasClamped: Bool = false) {
        self.inputTokens = inputTokens
        self.outputTokens = outputTokens
        self.cacheReadTokens = cacheReadTokens
        self.cacheWriteTokens = cacheWriteTokens
        self.wasClamped = wasClamped
    }

    /// Every input token, cached or not (OpenAI's `prompt_tokens`).
    public var totalInputTokens: Int { inputTokens + cacheReadTokens + cacheWriteTokens }
}

/// Why a model stopped generating.
public enum StopReason: Sendable, Hashable {
    case endTurn
    case maxTokens
    case stopSequence(String?)
    case toolUse
    case contentFilter
    case other(String)
}

/// An image given by URL or inline data.
public enum ImageSource: Sendable, Hashable {
    case url(String)
    case base64(mediaType: String, data: String)
}

/// One piece of message content.
public enum ContentBlock: Sendable, Hashable {
    /// Text, optionally marked as an Anthropic prompt-cache breakpoint.
    case text(String, cacheControl: JSONValue? = nil)
    /// An image.
    case image(ImageSource, cacheControl: JSONValue? = nil)
    /// A tool call made by the assistant; `arguments` is JSON text.
    case toolUse(id: String, name: String, arguments: String)
    /// The result of a tool call, sent back by the user side.
    case toolResult(toolUseID: String, content: [ContentBlock], isError: Bool, cacheControl: JSONValue? = nil)
    /// A block of a kind the gateway does not interpret, in the source format; sent only to same-format upstreams.
    case raw(JSONValue, format: APIFormat)

    /// The text of a text block.
    public var text: String? {
        if case .text(let text, _) = self { return text }
        return nil
    }
}

/// A message role.
public enum Role: String, Sendable, Hashable {
    case system, developer, user, assistant, tool
}

/// One conversation turn.
public struct ChatMessage: Sendable, Hashable {
    public var role: Role
    public var content: [ContentBlock]
    /// OpenAI's optional participant name.
    public var name: String?

    public init(role: Role, content: [ContentBlock], name: String? = nil) {
        self.role = role
        self.content = content
        self.name = name
    }
}

/// A tool the model may call.
public struct ToolDefinition: Sendable, Hashable {
    public var name: String
    public var description: String?
    /// JSON Schema of the input object.
    public var inputSchema: JSONValue
    /// OpenAI's `strict` flag.
    public var strict: Bool?
    /// Anthropic prompt-cache breakpoint.
    public var cacheControl: JSONValue?

    public init(name: String, description: String? = nil, inputSchema: JSONValue, strict: Bool? = nil,
                cacheControl: JSONValue? = nil) {
        self.name = name
        self.description = description
        self.inputSchema = inputSchema
        self.strict = strict
        self.cacheControl = cacheControl
    }
}

/// How the model must use tools.
public enum ToolChoice: Sendable, Hashable {
    case auto, disabled, required
    case tool(String)
}

/// A chat request in the gateway's canonical form, decoded from either wire format.
public struct ChatRequest: Sendable, Hashable {
    /// The public model name the client asked for.
    public var model: String
    /// Anthropic's top-level system prompt (OpenAI system messages stay in `messages`).
    public var system: [ContentBlock]
    public var messages: [ChatMessage]
    public var tools: [ToolDefinition]
    public var toolChoice: ToolChoice?
    public var parallelToolCalls: Bool?
    public var maxTokens: Int?
    public var temperature: Double?
    public var topP: Double?
    public var topK: Int?
    public var stop: [String]
    public var seed: Int64?
    public var responseFormat: JSONValue?
    public var logprobs: Bool?
    public var topLogprobs: Int?
    public var n: Int?
    /// End-user identifier (OpenAI `user`, Anthropic `metadata.user_id`).
    public var user: String?
    public var stream: Bool
    /// Whether the client asked for usage in the stream (OpenAI `stream_options.include_usage`).
    public var streamIncludeUsage: Bool
    /// The format the client spoke.
    public var sourceFormat: APIFormat
    /// Top-level fields the gateway does not interpret; forwarded only to upstreams of `sourceFormat`.
    public var extras: [String: JSONValue]
    /// Whether an OpenAI client spelled the limit `max_completion_tokens` (kept when forwarding to OpenAI).
    public var usesMaxCompletionTokens: Bool

    public init(model: String, system: [ContentBlock] = [], messages: [ChatMessage], tools: [ToolDefinition] = [],
                toolChoice: ToolChoice? = nil, parallelToolCalls: Bool? = nil, maxTokens: Int? = nil,
                temperature: Double? = nil, topP: Double? = nil, topK: Int? = nil, stop: [String] = [],
                seed: Int64? = nil, responseFormat: JSONValue? = nil, logprobs: Bool? = nil, topLogprobs: Int? = nil,
                n: Int? = nil, user: String? = nil, stream: Bool = false, streamIncludeUsage: Bool = false,
                sourceFormat: APIFormat, extras: [String: JSONValue] = [:], usesMaxCompletionTokens: Bool = false) {
        self.model = model
        self.system = system
        self.messages = messages
        self.tools = tools
        self.toolChoice = toolChoice
        self.parallelToolCalls = parallelToolCalls
        self.maxTokens = maxTokens
        self.temperature = temperature
        self.topP = topP
        self.topK = topK
        self.stop = stop
        self.seed = seed
        self.responseFormat = responseFormat
        self.logprobs = logprobs
        self.topLogprobs = topLogprobs
        self.n = n
        self.user = user
        self.stream = stream
        self.streamIncludeUsage = streamIncludeUsage
        self.sourceFormat = sourceFormat
        self.extras = extras
        self.usesMaxCompletionTokens = usesMaxCompletionTokens
    }
}

/// One alternative answer.
public struct ChatChoice: Sendable, Hashable {
    public var index: Int
    /// Text and tool-use blocks, in order.
    public var content: [ContentBlock]
    public var stopReason: StopReason?
    /// OpenAI log probabilities, passed through.
    public var logprobs: JSONValue?

    public init(index: Int = 0, content: [ContentBlock], stopReason: StopReason?, logprobs: JSONValue? = nil) {
        self.index = index
        self.content = content
        self.stopReason = stopReason
        self.logprobs = logprobs
    }
}

/// A complete (non-streamed) answer in canonical form.
public struct ChatResponse: Sendable, Hashable {
    public var id: String
    /// The model that answered, as the upstream named it.
    public var model: String
    public var created: Int64?
    public var choices: [ChatChoice]
    public var usage: Usage
    public var systemFingerprint: String?

    public init(id: String, model: String, created: Int64? = nil, choices: [ChatChoice], usage: Usage,
                systemFingerprint: String? = nil) {
        self.id = id
        self.model = model
        self.created = created
        self.choices = choices
        self.usage = usage
        self.systemFingerprint = systemFingerprint
    }
}

/// One step of a streamed answer in canonical form.
public enum ChatChunk: Sendable, Hashable {
    /// The answer begins; Anthropic reports input usage here.
    case start(id: String, model: String, usage: Usage?)
    case text(choice: Int, String)
    case toolCallStart(choice: Int, index: Int, id: String, name: String)
    case toolCallArguments(choice: Int, index: Int, String)
    case finish(choice: Int, StopReason)
    /// Usage so far (the latest report wins).
    case usage(Usage)
}
