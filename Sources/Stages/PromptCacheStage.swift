public import SwitchyardCore
public import SwitchyardModels

/// After the response caches: for OpenAI-format requests routed to an Anthropic model with `prompt_cache: auto`,
/// marks Anthropic prompt-cache breakpoints (`cache_control: {type: ephemeral}`) after the tools and after the system
/// prompt when the prefix they end is at least the model's minimum cacheable length. Requests that already carry
/// breakpoints, and requests in Anthropic's own format, are left as the client wrote them.
///
/// It runs after the caches so that their keys are computed on the request the client sent.
public struct PromptCacheStage: GatewayStage {
    let providers: [String: ProviderConfig]

    public init(providers: [String: ProviderConfig]) {
        self.providers = providers
    }

    public func handle(_ request: ChatRequest, context: GatewayContext, next: @escaping Next) async throws -> GatewayResponse {
        guard let marked = marked(request, context: context) else { return try await next(request, context) }
        return try await next(marked, context)
    }

    /// The request with breakpoints marked, or `nil` when this stage leaves it alone. Synchronous, so that the
    /// route and provider it looks at stay out of the task's frame.
    @inline(never)
    func marked(_ request: ChatRequest, context: GatewayContext) -> ChatRequest? {
        guard let route = context.route, route.autoPromptCache, request.sourceFormat == .openAI,
              providers[route.provider]?.kind.format(forUpstreamModel: route.upstreamModel) == .anthropic
        else { return nil }
        return Self.markBreakpoints(request, upstreamModel: route.upstreamModel)
    }

    /// The least prefix Anthropic caches, in tokens, from the catalog (1,024 for models outside it: too low only
    /// adds a breakpoint the provider ignores).
    static func minimumTokens(_ upstreamModel: String) -> Int {
        DefaultCatalog.entry(named: upstreamModel)?.promptCacheMinimumTokens ?? 1024
    }

    /// About four characters per token for English text; overestimating only adds a breakpoint the provider ignores.
    static func estimatedTokens(_ text: String) -> Int {
        text.utf8.count / 4
    }

    static let ephemeral: JSONValue = ["type": "ephemeral"]

    public static func markBreakpoints(_ request: ChatRequest, upstreamModel: String) -> ChatRequest {
        guard !hasBreakpoints(request) else { return request }
        var request = request
        let minimum = minimumTokens(upstreamModel)
        // Anthropic's prefix order: tools, then system, then messages.
        let toolTokens = request.tools.reduce(0) { total, tool in
            total + estimatedTokens(tool.name + (tool.description ?? "") + String(decoding: tool.inputSchema.serialized(), as: UTF8.self))
        }
        if toolTokens >= minimum, !request.tools.isEmpty {
            request.tools[request.tools.count - 1].cacheControl = ephemeral
        }
        // The system prompt of an OpenAI client is its leading system (or developer) messages.
        let systemIndices = request.messages.indices.prefix { [.system, .developer].contains(request.messages[$0].role) }
        let systemTokens = systemIndices.reduce(0) { total, index in
            total + request.messages[index].content.reduce(0) { $0 + estimatedTokens($1.text ?? "") }
        }
        if toolTokens + systemTokens >= minimum, systemTokens > 0, let last = systemIndices.last,
           let block = request.messages[last].content.lastIndex(where: { $0.text != nil }),
           case .text(let text, _) = request.messages[last].content[block]
        {
            request.messages[last].content[block] = .text(text, cacheControl: ephemeral)
        }
        return request
    }

    static func hasBreakpoints(_ request: ChatRequest) -> Bool {
        if request.tools.contains(where: { $0.cacheControl != nil }) { return true }
        for block in request.system + request.messages.flatMap(\.content) {
            switch block {
            case .text(_, let cacheControl?), .image(_, let cacheControl?), .toolResult(_, _, _, let cacheControl?):
                _ = cacheControl
                return true
            default: continue
            }
        }
        return false
    }
}
