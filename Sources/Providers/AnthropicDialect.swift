import SwitchyardCore
import SwitchyardModels

extension UpstreamDialect {
    /// The Anthropic API version header sent upstream.
    public static let anthropicVersion = "2023-06-01"

    /// Anthropic Messages.
    public static let anthropic = UpstreamDialect(
        format: .anthropic,
        path: "/v1/messages",
        authHeaders: { apiKey in
            var headers = [("anthropic-version", anthropicVersion)]
            if let apiKey { headers.append(("x-api-key", apiKey)) }
            return headers
        },
        renderRequest: { request, upstreamModel throws(InvalidRequest) in
            try AnthropicFormat.renderRequest(request, upstreamModel: upstreamModel)
        },
        parseResponse: { body throws(InvalidRequest) in try AnthropicFormat.parseResponse(body) },
        parseUsage: { usage throws(InvalidRequest) in try AnthropicFormat.parseUsage(usage) },
        makeStreamParser: { AnthropicEventParser() },
        parseError: { body in (body["error"]?["type"]?.stringValue, body["error"]?["message"]?.stringValue) }
    )
}

struct AnthropicEventParser: UpstreamStreamParser {
    var parser = AnthropicStreamParser()

    mutating func parse(event: String?, data: String) throws -> (chunks: [ChatChunk], isTerminal: Bool) {
        let json = try JSONValue.parse(data)
        let chunks = try parser.parse(json)
        return (chunks, json["type"]?.stringValue == "message_stop")
    }
}
