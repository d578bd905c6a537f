@testable import Stages
import SwitchyardCore
import SwitchyardModels
import Testing

/// Golden tests for pricing under each provider's token semantics.
@Suite struct PricingTests {
    let sonnet = ModelPrice(usd: "3", "15", "0.30", "3.75")!
    let mini = ModelPrice(usd: "0.15", "0.60", "0.075", "0.15")!

    @Test func parsesDecimalPricesExactly() {
        #expect(NanoUSD(usd: "0.075") == NanoUSD(75_000_000))
        #expect(NanoUSD(usd: "18.75") == NanoUSD(18_750_000_000))
        #expect(NanoUSD(usd: "3") == NanoUSD(3_000_000_000))
        #expect(NanoUSD(usd: "-1") == nil)
        #expect(NanoUSD(usd: "0.0000000001") == nil)
        #expect(NanoUSD(usd: "abc") == nil)
        #expect(NanoUSD(1_234_567).usdString == "0.001234567")
    }

    @Test func anthropicCachedTokensArePricedAtTheirRates() throws {
        // input_tokens excludes cache reads and writes in Anthropic's usage.
        let response = try AnthropicFormat.parseResponse(JSONValue.parse("""
            {"id":"m","model":"claude-sonnet-4-5","content":[],"stop_reason":"end_turn",
             "usage":{"input_tokens":1000,"output_tokens":500,"cache_read_input_tokens":20000,"cache_creation_input_tokens":4000}}
            """))
        // 1000×3 + 500×15 + 20000×0.30 + 4000×3.75 = 3000 + 7500 + 6000 + 15000 = 31,500 USD per million → $0.0315
        #expect(sonnet.cost(of: response.usage) == NanoUSD(31_500_000))
    }

    @Test func openAICachedTokensAreSubtractedFromPromptTokens() throws {
        // prompt_tokens includes cached_tokens in OpenAI's usage.
        let response = try OpenAIFormat.parseResponse(JSONValue.parse("""
            {"id":"c","model":"gpt-4o-mini","choices":[],
             "usage":{"prompt_tokens":3000,"completion_tokens":200,"prompt_tokens_details":{"cached_tokens":2048}}}
            """))
        #expect(response.usage == Usage(inputTokens: 952, outputTokens: 200, cacheReadTokens: 2048))
        // 952×0.15 + 200×0.60 + 2048×0.075 = 142.8 + 120 + 153.6 = 416.4 USD per million → 416.4 nano-USD per token-million
        #expect(mini.cost(of: response.usage) == NanoUSD(416_400))
    }

    @Test func roundsUpOnceToAWholeNanoDollar() {
        // 1 token at $0.15 per million = 150 nano-USD exactly; 1 token at $0.075 = 75.
        #expect(mini.cost(of: Usage(inputTokens: 1)) == NanoUSD(150))
        let odd = ModelPrice(usd: "0.000001", "0", "0", "0")!  // 1000 nano-USD per million tokens
        #expect(odd.cost(of: Usage(inputTokens: 1)) == NanoUSD(1))  // 0.001 nano-USD rounds up to 1
        #expect(odd.cost(of: Usage()) == .zero)
    }

    @Test func defaultCatalogHasTheFiveTiers() {
        #expect(DefaultCatalog.models.map(\.name) == ["claude-haiku-4-5", "claude-sonnet-4-5", "claude-opus-4-1", "gpt-4o-mini", "gpt-4o"])
        for entry in DefaultCatalog.models {
            #expect(entry.price.cacheRead < entry.price.input)
            #expect(entry.price.output > entry.price.input)
        }
    }

    @Test func streamsThatEndWithoutAUsageReportAreBilledForAnEstimate() throws {
        var request = ChatRequest(model: "m", messages: [ChatMessage(role: .user, content: [.text(String(repeating: "x", count: 40))])],
                                  sourceFormat: .openAI)
        request.system = [.text("1234")]
        let reported = Usage(inputTokens: 100, outputTokens: 1)
        // Completed with a report: as reported, even when the relayed text suggests more.
        let completed = CostAccountingStage.streamUsage(reported, outcome: .completed, request: request, observedOutputTokens: 50)
        #expect(completed.0 == reported && !completed.estimated)
        // Anthropic-style, cut after message_start: its input stands, the output is what was relayed.
        let cut = CostAccountingStage.streamUsage(reported, outcome: .cancelled, request: request, observedOutputTokens: 50)
        #expect(cut.0 == Usage(inputTokens: 100, outputTokens: 50) && cut.estimated)
        // OpenAI-style, no report at all: the input is the request's 44 bytes of text, 11 tokens.
        let none = CostAccountingStage.streamUsage(nil, outcome: .cancelled, request: request, observedOutputTokens: 7)
        #expect(none.0 == Usage(inputTokens: 11, outputTokens: 7) && none.estimated)
        // A stream that completed without ever reporting usage (some self-hosted servers) is estimated too.
        let silent = CostAccountingStage.streamUsage(nil, outcome: .completed, request: request, observedOutputTokens: 3)
        #expect(silent.0 == Usage(inputTokens: 11, outputTokens: 3) && silent.estimated)
    }
}
