import SwitchyardCore
import SwitchyardModels

extension UpstreamDialect {
    /// OpenAI Chat Completions (also vLLM, llama.cpp and other OpenAI-compatible servers).
    public static let openAI = UpstreamDialect(
        format: .openAI,
        path: "/v1/chat/completions",
        authHeaders: { apiKey in apiKey.map { [("authorization", "Bearer \($0)")] } ?? [] },
        renderRequest: { request, upstreamModel throws(InvalidRequest) in
            OpenAIFormat.renderRequest(request, upstreamModel: upstreamModel)
        },
        parseResponse: { body throws(InvalidRequest) in try OpenAIFormat.parseResponse(body) },
        parseUsage: { usage throws(InvalidRequest) in try OpenAIFormat.parseUsage(usage) },
        makeStreamParser: { OpenAIStreamParser() },
        parseError: { body in (body["error"]?["type"]?.stringValue, body["error"]?["message"]?.stringValue) }
    )
}

struct OpenAIStreamParser: UpstreamStreamParser {
    var started = false

    mutating func parse(event: String?, data: String) throws -> (chunks: [ChatChunk], isTerminal: Bool) {
        if data == "[DONE]" { return ([], true) }
        let json = try JSONValue.parse(data)
        if let error = json["error"], !error.isNull {
            throw UpstreamStreamError(type: error["type"]?.stringValue ?? "server_error",
                                      message: error["message"]?.stringValue ?? "upstream stream error")
        }
        return (try OpenAIFormat.parseChunk(json, started: &started), false)
    }
}
