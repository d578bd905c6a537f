import Caching
import Embeddings
import Foundation
import Limits
@testable import Server
import SwitchyardCore
import SwitchyardTestKit
import Testing

/// A request the limits refuse is answered, when the caller's policy allows, from a stale exact answer, a looser
/// (still verified) semantic match or a cheaper model, saying so in `x-switchyard-degraded`; otherwise the 429.
@Suite(.serialized) struct DegradationTests {
    static func body(_ text: String, model: String = "gpt-4o-mini", stream: Bool = false) -> String {
        #"{"model":"\#(model)","max_tokens":20,"stream":\#(stream),"messages":[{"role":"user","content":"\#(text)"}]}"#
    }

    static func metric(_ url: String, _ line: String) async throws -> Int? {
        let text = try await send("\(url)/metrics", method: "GET", contentType: nil).body
        guard let found = text.split(separator: "\n").first(where: { $0.hasPrefix(line + " ") }) else { return nil }
        return Int(Double(found.split(separator: " ").last ?? "") ?? -1)
    }

    @Test(arguments: [false, true]) func aStaleExactAnswerIsServedOnlyWhenRefusedAndOnlyWithinStaleFor(redis: Bool) async throws {
        // In Redis the answer is kept (PX) for its TTL plus the longest stale_for, and its TTL travels in the entry.
        let server = redis ? try RedisServerProcess() : nil
        var config = server.map { SharedStateTests.config(redisPort: $0.port) } ?? TestConfigs.embedded()
        config.cache.semanticEnabled = false
        config.cache.ttl = .milliseconds(300)
        config.limits = [LimitDefinition(name: "per-user", measure: .requests, amount: 2, window: .minute, scope: [.user])]
        config.degrade = [DegradePolicy(steps: [.cache(staleFor: .seconds(1), semanticThreshold: nil)])]
        try await withTestGateway(config) { _, url in
            let first = try await send("\(url)/v1/chat/completions", body: Self.body("what is stale?"))
            #expect(first.status == 200 && first.header("x-switchyard-cache") == "miss")
            try await Task.sleep(for: .milliseconds(450))
            // Past its TTL and the limit has room: a miss, answered by the model (not a stale answer).
            let fresh = try await send("\(url)/v1/chat/completions", body: Self.body("what is stale?"))
            #expect(fresh.status == 200 && fresh.header("x-switchyard-cache") == "miss", "\(fresh.headers)")
            #expect(fresh.header("x-switchyard-degraded") == nil)
            try await Task.sleep(for: .milliseconds(450))
            // The limit is spent: the stale answer, saying so, with the refused limit's headers.
            let stale = try await send("\(url)/v1/chat/completions", body: Self.body("what is stale?"))
            #expect(stale.status == 200, "\(stale.body)")
            #expect(stale.header("x-switchyard-degraded") == "cache-stale" && stale.header("x-switchyard-cache") == "hit-exact")
            #expect(stale.header("x-ratelimit-remaining-requests") == "0")
            #expect(stale.body.contains(#""content""#))
            // As a stream too.
            let streamed = try await send("\(url)/v1/chat/completions", body: Self.body("what is stale?", stream: true))
            #expect(streamed.status == 200 && streamed.header("x-switchyard-degraded") == "cache-stale" && streamed.body.contains("[DONE]"))
            // A question never answered has nothing stale: the 429.
            #expect(try await send("\(url)/v1/chat/completions", body: Self.body("never asked")).status == 429)
            // Past TTL + stale_for: gone, the 429.
            try await Task.sleep(for: .milliseconds(1100))
            let gone = try await send("\(url)/v1/chat/completions", body: Self.body("what is stale?"))
            #expect(gone.status == 429 && gone.header("x-switchyard-degraded") == nil, "\(gone.headers)")
            #expect(try await Self.metric(url, #"switchyard_degraded_total{kind="cache-stale"}"#) == 2)
            #expect(try await Self.metric(url, #"switchyard_rate_limited_total{limit="per-user"}"#) == 2)
        }
    }

    @Test func aPolicyAppliesOnlyToTheCallersItNames() async throws {
        var config = TestConfigs.embedded()
        config.cache.semanticEnabled = false
        config.cache.ttl = .milliseconds(200)
        config.limits = [LimitDefinition(name: "per-tenant", measure: .requests, amount: 1, window: .minute, scope: [.tenant])]
        config.degrade = [DegradePolicy(when: [.tier: ["paid"]], steps: [.cache(staleFor: .seconds(30), semanticThreshold: nil)])]
        try await withTestGateway(config) { _, url in
            #expect(try await send("\(url)/v1/chat/completions", body: Self.body("tiered")).status == 200)
            try await Task.sleep(for: .milliseconds(300))
            // The embedded callers are of tier "default": no policy, the 429.
            #expect(try await send("\(url)/v1/chat/completions", body: Self.body("tiered")).status == 429)
        }
    }

    @Test func aLooserVerifiedSemanticMatchIsServedWhenRefused() async throws {
        var config = TestConfigs.embedded()
        config.cache.exactEnabled = false
        config.limits = [LimitDefinition(name: "per-user", measure: .requests, amount: 1, window: .minute, scope: [.user])]
        config.degrade = [DegradePolicy(steps: [.cache(staleFor: nil, semanticThreshold: 0.6)])]
        let embeddings = EmbeddingsSetting.model(directory: ModelStore().modelDirectory)
        try await withTestGateway(config, embeddings: embeddings) { gateway, url in
            let first = try await send("\(url)/v1/chat/completions", body: Self.body("How do I reset my password?"))
            #expect(first.status == 200)
            for _ in 0..<100 where gateway.semanticCache.count == 0 { try await Task.sleep(for: .milliseconds(20)) }
            // Below the cache's own 0.94, above the degraded 0.6, and nothing the rules refuse.
            let near = try await send("\(url)/v1/chat/completions", body: Self.body("I forgot my password, how can I get back into my account?"))
            #expect(near.status == 200, "\(near.body)")
            #expect(near.header("x-switchyard-degraded") == "cache-semantic" && near.header("x-switchyard-cache") == "hit-semantic")
            let similarity = Double(near.header("x-switchyard-cache-similarity") ?? "") ?? 0
            #expect(similarity >= 0.6 && similarity < 0.94, "similarity \(similarity)")
            // Still verified: a different number is refused by the rules even though the texts are close.
            #expect(try await send("\(url)/v1/chat/completions", body: Self.body("How do I reset my password 3 times?")).status == 429)
            // Unrelated: the 429.
            #expect(try await send("\(url)/v1/chat/completions", body: Self.body("What is the weather in the mountains?")).status == 429)
        }
    }

    /// Two Anthropic requests for opus, whose limit admits one: the first served by opus, the second downgraded to
    /// `model`.
    static func opusTwice(_ url: String, downgradedTo model: String) async throws -> (first: TestResponse, second: TestResponse) {
        let anthropic = [("anthropic-version", "2023-06-01")]
        let first = try await send("\(url)/v1/messages", body: Self.body("one", model: "claude-opus-4-1"), headers: anthropic)
        #expect(first.status == 200 && first.header("x-switchyard-model") == "claude-opus-4-1")
        let second = try await send("\(url)/v1/messages", body: Self.body("two", model: "claude-opus-4-1"), headers: anthropic)
        #expect(second.status == 200 && second.header("x-switchyard-degraded") == "downgrade", "\(second.body)")
        #expect(second.header("x-switchyard-model") == model)
        return (first, second)
    }

    @Test func aDowngradeAnswersWithTheFirstCheaperModelItsOwnLimitsAdmit() async throws {
        var config = TestConfigs.embedded()
        config.cache.exactEnabled = false
        config.cache.semanticEnabled = false
        config.limits = [LimitDefinition(name: "opus", measure: .requests, amount: 1, window: .minute, scope: [.user],
                                         when: [.model: ["claude-opus-4-1"]]),
                         LimitDefinition(name: "sonnet", measure: .requests, amount: 1, window: .minute, scope: [.user],
                                         when: [.model: ["claude-sonnet-4-5"]])]
        config.degrade = [DegradePolicy(steps: [.cache(staleFor: .seconds(60), semanticThreshold: nil),
                                                .downgrade(["claude-opus-4-1", "claude-sonnet-4-5", "claude-haiku-4-5"])])]
        try await withTestGateway(config) { _, url in
            let anthropic = [("anthropic-version", "2023-06-01")]
            let (first, second) = try await Self.opusTwice(url, downgradedTo: "claude-sonnet-4-5")
            // Sonnet's own limit applied: its headers are on the answer.
            #expect(second.header("anthropic-ratelimit-requests-limit") == "1" && second.header("anthropic-ratelimit-requests-remaining") == "0")
            // Priced at the model that served.
            let cost = Double(second.header("x-switchyard-cost-usd") ?? "") ?? 0
            let opusCost = Double(first.header("x-switchyard-cost-usd") ?? "") ?? 0
            #expect(cost > 0 && cost < opusCost, "\(cost) vs \(opusCost)")
            // Both spent: haiku (no limit of its own), as a stream.
            let third = try await send("\(url)/v1/messages", body: Self.body("three", model: "claude-opus-4-1", stream: true), headers: anthropic)
            #expect(third.status == 200 && third.header("x-switchyard-model") == "claude-haiku-4-5" && third.body.contains("message_stop"))
            // Asked for sonnet (spent): down the list from sonnet, so haiku.
            let fourth = try await send("\(url)/v1/messages", body: Self.body("four", model: "claude-sonnet-4-5"), headers: anthropic)
            #expect(fourth.header("x-switchyard-model") == "claude-haiku-4-5")
            #expect(try await Self.metric(url, #"switchyard_degraded_total{kind="downgrade"}"#) == 3)
        }
    }

    @Test func aDowngradeToARouteAnswersWithTheModelItsRulesChoose() async throws {
        var config = TestConfigs.embedded()
        config.cache.exactEnabled = false
        config.cache.semanticEnabled = false
        config.limits = [LimitDefinition(name: "opus", measure: .requests, amount: 1, window: .minute, scope: [.user],
                                         when: [.model: ["claude-opus-4-1"]])]
        // The route's rule limits the output too: the downgraded request goes as the route would send it.
        config.routes["budget"] = RouteConfig(name: "budget", rules: [
            RouteRule(name: "long", match: RuleMatch(promptTokens: 4000...Int.max), target: .model("claude-opus-4-1")),
            RouteRule(name: "short", target: .model("claude-haiku-4-5"), maxTokens: OutputLimit(defaultTokens: 4, cap: 4)),
        ])
        config.degrade = [DegradePolicy(steps: [.downgrade(["claude-opus-4-1", "budget"])])]
        try await withTestGateway(config) { _, url in
            let anthropic = [("anthropic-version", "2023-06-01")]
            let (first, second) = try await Self.opusTwice(url, downgradedTo: "claude-haiku-4-5")
            func outputTokens(_ body: String) throws -> Int {
                let usage = try #require(try JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any])["usage"] as? [String: Any]
                return try #require(usage?["output_tokens"] as? Int)
            }
            #expect(try outputTokens(first.body) > 4 && outputTokens(second.body) <= 4, "the route's cap applied")
            // A long prompt: the route would choose the refused model, which relieves nothing; the 429.
            let long = String(repeating: "many words in a long prompt ", count: 800)
            let third = try await send("\(url)/v1/messages", body: Self.body(long, model: "claude-opus-4-1"), headers: anthropic)
            #expect(third.status == 429, "\(third.status) \(third.headers)")
        }
    }

    @Test func aDowngradedAnswerIsNotCachedAndACachedAnswerCarriesNoOnesLimits() async throws {
        var config = TestConfigs.embedded()
        config.cache.semanticEnabled = false
        config.limits = [LimitDefinition(name: "strong", measure: .requests, amount: 1, window: .minute, scope: [.user],
                                         when: [.model: ["gpt-4o"]])]
        config.degrade = [DegradePolicy(steps: [.downgrade(["gpt-4o-mini"])])]
        try await withTestGateway(config) { _, url in
            let alice = [("authorization", "Bearer alice")]
            #expect(try await send("\(url)/v1/chat/completions", body: Self.body("first", model: "gpt-4o"), headers: alice).status == 200)
            let downgraded = try await send("\(url)/v1/chat/completions", body: Self.body("the same question", model: "gpt-4o"), headers: alice)
            #expect(downgraded.header("x-switchyard-degraded") == "downgrade")
            try await Task.sleep(for: .milliseconds(100))
            // Asked again by alice: not a cached copy of the cheaper model's answer, so downgraded again.
            let again = try await send("\(url)/v1/chat/completions", body: Self.body("the same question", model: "gpt-4o"), headers: alice)
            #expect(again.header("x-switchyard-cache") == "miss" && again.header("x-switchyard-degraded") == "downgrade", "\(again.headers)")
            // Her first answer is cached: its hit is not counted, and carries no rate-limit headers of the request
            // that made it (with a shared tenant, those would be another user's).
            let hit = try await send("\(url)/v1/chat/completions", body: Self.body("first", model: "gpt-4o"), headers: alice)
            #expect(hit.header("x-switchyard-cache") == "hit-exact")
            #expect(hit.header("x-ratelimit-remaining-requests") == nil && hit.header("x-switchyard-degraded") == nil, "\(hit.headers)")
        }
    }

    @Test func aDowngradeWhoseLimitsAlsoRefuseEndsInThe429() async throws {
        var config = TestConfigs.embedded()
        config.cache.exactEnabled = false
        config.cache.semanticEnabled = false
        // A per-user limit whatever the model: no downgrade relieves it.
        config.limits = [LimitDefinition(name: "per-user", measure: .requests, amount: 1, window: .minute, scope: [.user])]
        config.degrade = [DegradePolicy(steps: [.downgrade(["gpt-4o-mini"])])]
        try await withTestGateway(config) { _, url in
            #expect(try await send("\(url)/v1/chat/completions", body: Self.body("one", model: "gpt-4o")).status == 200)
            let refused = try await send("\(url)/v1/chat/completions", body: Self.body("two", model: "gpt-4o"))
            #expect(refused.status == 429 && refused.body.contains("per-user"), "\(refused.body)")
            // The failed downgrade attempts reserved nothing: the limit's state is still 1 used.
            let mine = try await send("\(url)/v1/limits", method: "GET", contentType: nil)
            #expect(mine.body.contains(#""remaining":0"#), "\(mine.body)")
        }
    }

    @Test func degradePoliciesAreCheckedAtLoad() throws {
        let base = "providers: {m: {kind: mock}}\nmodels: {gpt-4o: {provider: m}, gpt-4o-mini: {provider: m}, claude-sonnet-4-5: {provider: m}, claude-haiku-4-5: {provider: m}}\n"
        func load(_ yaml: String) throws -> GatewayConfig { try ConfigLoader.parse(yaml: base + yaml, environment: [:]) }
        let good = try load("""
        degrade:
          - when: {tier: [free, trial], feature: chat}
            steps:
              - cache: {stale_for_seconds: 600, semantic_threshold: 0.85}
              - downgrade: [claude-sonnet-4-5, claude-haiku-4-5]
          - steps:
              - downgrade: gpt-4o-mini
        """)
        #expect(good.degrade.count == 2)
        #expect(good.degrade[0].when[.tier] == ["free", "trial"] && good.degrade[0].when[.feature] == ["chat"])
        #expect(good.degrade[0].steps == [.cache(staleFor: .seconds(600), semanticThreshold: 0.85),
                                          .downgrade(["claude-sonnet-4-5", "claude-haiku-4-5"])])
        #expect(DegradePolicy.staleRetention(good.degrade) == .seconds(600))
        // A downgrade may name a route.
        let routed = try load("routes: {budget: {rules: [{model: claude-haiku-4-5}]}}\ndegrade:\n  - steps: [{downgrade: [budget, gpt-4o-mini]}]")
        #expect(routed.degrade[0].steps == [.downgrade(["budget", "gpt-4o-mini"])])
        // The queue step (the job queue) is a bare word.
        let queued = try load("degrade:\n  - steps: [{downgrade: gpt-4o-mini}, queue]")
        #expect(queued.degrade[0].steps == [.downgrade(["gpt-4o-mini"]), .queue])
        for (yaml, path) in [
            ("degrade:\n  - steps: [{queue: {priority: p0}}]", "degrade[0].steps[0].queue"),
            ("degrade:\n  - steps: []", "degrade[0].steps"),
            ("degrade:\n  - steps:\n      - downgrade: [gpt-4o, nope]", "degrade[0].steps[0].downgrade[1]"),
            ("degrade:\n  - steps:\n      - downgrade: nope", "degrade[0].steps[0].downgrade"),
            ("degrade:\n  - steps:\n      - cache: {}", "degrade[0].steps[0].cache"),
            ("degrade:\n  - steps:\n      - cache: {semantic_threshold: 0.2}", "degrade[0].steps[0].cache.semantic_threshold"),
            ("degrade:\n  - steps:\n      - cache: {stale_for_seconds: -1}", "degrade[0].steps[0].cache.stale_for_seconds"),
            ("degrade:\n  - steps:\n      - retry: {}", "degrade[0].steps[0].retry"),
            ("degrade:\n  - when: {user: bob}\n    steps: [{downgrade: gpt-4o}]", "degrade[0].when.user"),
        ] {
            do {
                _ = try load(yaml)
                Issue.record("accepted: \(yaml)")
            } catch let error as ConfigError {
                #expect(error.path == path, "\(yaml) → \(error)")
            }
        }
    }
}
