import NIOCore
import SwitchyardCore
import SwitchyardModels
import Testing

/// When the provider may forward the client's own bytes instead of rendering the request again.
@Suite struct PassthroughTests {
    static let body = #"{"model":"gpt-4o-mini","max_tokens":12,"messages":[{"role":"user","content":"Hi"}],"x_vendor_field":1}"#

    static func original() throws -> ClientOriginal {
        let request = try OpenAIFormat.parseRequest(try JSONValue.parse(Array(body.utf8)))
        return ClientOriginal(request: request, body: ByteBuffer(string: body))
    }

    @Test func anUnchangedRequestForTheSameFormatAndModelIsForwardedAsSent() throws {
        let original = try Self.original()
        let forwarded = try #require(original.body(for: original.request, format: .openAI, upstreamModel: "gpt-4o-mini"))
        #expect(String(buffer: forwarded) == Self.body)
        // A copy that shares nothing with the parsed request but is equal still qualifies.
        let reparsed = try OpenAIFormat.parseRequest(try JSONValue.parse(Array(Self.body.utf8)))
        #expect(original.body(for: reparsed, format: .openAI, upstreamModel: "gpt-4o-mini") != nil)
    }

    @Test func anythingElseIsRenderedAgain() throws {
        let original = try Self.original()
        // Another upstream format, another upstream model name.
        #expect(original.body(for: original.request, format: .anthropic, upstreamModel: "gpt-4o-mini") == nil)
        #expect(original.body(for: original.request, format: .openAI, upstreamModel: "gpt-4o-mini-2024-07-18") == nil)
        // A stream: the gateway asks the upstream for usage, which the client may not have.
        var streamed = original.request
        streamed.stream = true
        #expect(original.body(for: streamed, format: .openAI, upstreamModel: "gpt-4o-mini") == nil)
        // A stage changed the request (as the prompt-cache stage adds cache points).
        var changed = original.request
        changed.messages.append(ChatMessage(role: .assistant, content: [.text("Hello")]))
        #expect(original.body(for: changed, format: .openAI, upstreamModel: "gpt-4o-mini") == nil)
        var retuned = original.request
        retuned.temperature = 0.5
        #expect(original.body(for: retuned, format: .openAI, upstreamModel: "gpt-4o-mini") == nil)
    }
}
