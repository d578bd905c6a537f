import LoadTest
import Testing

/// The scenario timeline reads the gateway's counters from its Prometheus text and prints the change per second.
@Suite struct GatewayTimelineTests {
    static func metrics(retries: Int, fallbacks: Int, circuit: Int, miniTokens: Int, haikuTokens: Int) -> String {
        """
        # HELP switchyard_upstream_retries_total Attempts made again.
        switchyard_upstream_retries_total{provider="mock"} \(retries)
        switchyard_upstream_retries_total{provider="other"} 1
        switchyard_upstream_fallbacks_total{model="gpt-4o-mini"} \(fallbacks)
        switchyard_circuit_state{deployment="mock/gpt-4o-mini"} \(circuit)
        switchyard_circuit_state{deployment="mock/claude-haiku-4-5"} 0
        switchyard_tokens_total{model="gpt-4o-mini",kind="output"} \(miniTokens)
        switchyard_tokens_total{model="gpt-4o-mini",kind="input"} 999
        switchyard_tokens_total{model="claude-haiku-4-5",kind="output"} \(haikuTokens)
        switchyard_requests_total{api="openai",status="200",stream="false"} 12
        """
    }

    @Test func countersAreParsedAndEachSecondShowsWhatChanged() {
        let first = GatewayTimeline.parse(prometheus: Self.metrics(retries: 2, fallbacks: 0, circuit: 0, miniTokens: 100, haikuTokens: 0))
        #expect(first.retries == 3 && first.fallbacks == 0)
        #expect(first.circuits == ["mock/gpt-4o-mini": 0, "mock/claude-haiku-4-5": 0])
        #expect(first.outputTokens == ["gpt-4o-mini": 100, "claude-haiku-4-5": 0])
        var timeline = GatewayTimeline()
        timeline.append(first)
        var second = GatewayTimeline.parse(prometheus: Self.metrics(retries: 7, fallbacks: 4, circuit: 1, miniTokens: 150, haikuTokens: 80))
        second.upstreamRequests = 9
        second.upstreamFaults = 5
        timeline.append(second)
        let lines = timeline.render()
        #expect(lines.count == 3, "\(lines)")
        #expect(lines.first?.contains("claude-haiku-4-5 output tokens | gpt-4o-mini output tokens") == true, "\(lines)")
        #expect(lines.last == "| 1 | 9 | 0 | 5 | 5 | 4 | 80 | 50 | mock/gpt-4o-mini open |", "\(lines)")
        #expect(timeline.breakerOpened(after: 0) == 1)
        #expect(timeline.breakerOpened(after: 5) == nil)
    }
}
