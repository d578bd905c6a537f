public import SwitchyardCore
public import SwitchyardModels

/// What differs between upstream wire formats: path, headers, request and response codecs, stream parsing.
/// One dialect per provider format, each in its own file.
public struct UpstreamDialect: Sendable {
    /// The format the upstream speaks.
    public let format: APIFormat
    /// Path under the provider's base URL.
    public let path: String
    /// Authentication and version headers for a provider API key.
    let authHeaders: @Sendable (_ apiKey: String?) -> [(String, String)]
    /// The upstream request body.
    let renderRequest: @Sendable (ChatRequest, _ upstreamModel: String) throws(InvalidRequest) -> JSONValue
    /// A complete answer.
    let parseResponse: @Sendable (JSONValue) throws(InvalidRequest) -> ChatResponse
    /// A usage object alone.
    let parseUsage: @Sendable (JSONValue) throws(InvalidRequest) -> Usage
    /// A fresh, stateful parser for one stream.
    let makeStreamParser: @Sendable () -> any UpstreamStreamParser
    /// Reads the provider's error body: its error type and message.
    let parseError: @Sendable (JSONValue) -> (type: String?, message: String?)

    /// The dialect for a provider kind and upstream model.
    public static func forProvider(_ kind: ProviderKind, upstreamModel: String) -> UpstreamDialect {
        switch kind.format(forUpstreamModel: upstreamModel) {
        case .openAI: .openAI
        case .anthropic: .anthropic
        }
    }
}

/// Turns one upstream SSE event's data into canonical chunks.
protocol UpstreamStreamParser {
    /// - Returns: The chunks, and whether this event ends the stream cleanly.
    mutating func parse(event: String?, data: String) throws -> (chunks: [ChatChunk], isTerminal: Bool)
}
