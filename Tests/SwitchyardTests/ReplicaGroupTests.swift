@testable import Providers
import SwitchyardCore
import SwitchyardTestKit
import Testing

/// A replica group through the gateway: requests spread over the replicas, and one that keeps failing is ejected
/// after its fifth failure in a row (the rest go to the other).
@Suite struct ReplicaGroupTests {
    /// A stream's work leaves its replica's count as it is done: the prompt at the first event with output, then the
    /// output in steps of 16 tokens up to the expected length; the end takes what is left.
    @Test func aStreamsProgressIsTakenFromTheCountInSteps() {
        var progress = ReplicaGroup.StreamProgress()
        #expect(progress.advance(pieces: 1, prompt: 900, expected: 100) == 900)
        #expect(progress.advance(pieces: 14, prompt: 900, expected: 100) == 0, "15 tokens: not a step yet")
        #expect(progress.advance(pieces: 1, prompt: 900, expected: 100) == 16)
        #expect(progress.advance(pieces: 200, prompt: 900, expected: 100) == 80, "never past the expected 100 (6 steps)")
        #expect(progress.taken == 996)
    }

    @Test func requestsSpreadAndAFailingReplicaIsEjected() async throws {
        let healthy = try await HostileUpstream.start { request in [.write(HostileUpstream.completion(request))] }
        let failing = try await HostileUpstream.start { _ in [.write(HostileUpstream.error(503, headers: ""))] }
        do {
            var config = TestConfigs.embedded()
            var provider = ProviderConfig(name: "replicas", kind: .openAICompatible, baseURL: healthy.baseURL)
            provider.replicas = [healthy.baseURL, failing.baseURL]
            config.providers["replicas"] = provider
            config.models["local"] = ModelRoute(name: "local", provider: "replicas", upstreamModel: "m",
                                                price: ModelPrice(usd: "0", "0", "0", "0")!)
            config.cache.exactEnabled = false
            try await withTestGateway(config) { _, url in
                var statuses: [Int] = []
                for index in 0..<40 {
                    let body = #"{"model":"local","max_tokens":10,"messages":[{"role":"user","content":"marker-\#(index)"}]}"#
                    statuses.append(try await send("\(url)/v1/chat/completions", body: body).status)
                }
                #expect(failing.counts.withLock { $0.requests } == 5, "ejected after five failures in a row")
                #expect(healthy.counts.withLock { $0.requests } == 35)
                #expect(statuses.filter { $0 == 200 }.count == 35)
            }
        } catch {
            try? await healthy.stop()
            try? await failing.stop()
            throw error
        }
        try await healthy.stop()
        try await failing.stop()
    }

    @Test func aReplicaGroupIsReadAndChecked() throws {
        let config = try ConfigLoader.parse(yaml: """
            providers:
              vllm: {kind: openai-compatible, replicas: ["http://10.0.0.1:8000/v1", "http://10.0.0.2:8000"], balancing: least_requests}
            models: {llama: {provider: vllm, price: {input: 0, output: 0}}}
            """, environment: [:])
        #expect(config.providers["vllm"]?.replicas == ["http://10.0.0.1:8000", "http://10.0.0.2:8000"])
        #expect(config.providers["vllm"]?.balancing == "least_requests")
        for (yaml, path) in [
            ("vllm: {kind: openai-compatible, replicas: [\"ftp://x\"]}", "providers.vllm.replicas[0]"),
            ("vllm: {kind: openai-compatible, replicas: []}", "providers.vllm.replicas"),
            ("vllm: {kind: openai-compatible, replicas: [\"http://a:1\"], base_url: \"http://b:1\"}", "providers.vllm.base_url"),
            ("vllm: {kind: openai-compatible, replicas: [\"http://a:1\"], balancing: fastest}", "providers.vllm.balancing"),
            ("vllm: {kind: mock, replicas: [\"http://a:1\"]}", "providers.vllm.replicas"),
        ] {
            #expect(AttemptsThroughTheGatewayTests.refusedPath(
                "providers:\n  \(yaml)\nmodels: {llama: {provider: vllm, price: {input: 0, output: 0}}}") == path, "\(yaml)")
        }
    }
}
