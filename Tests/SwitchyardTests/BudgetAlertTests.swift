import Foundation
import HTTPEdge
import HTTPTypes
import NIOCore
import NIOHTTP1
import Limits
import Logging
import Server
import SwitchyardCore
import SwitchyardModels
import SwitchyardTestKit
import Testing

/// Budgets (spend limits per day or month) with alert thresholds: each threshold alerts once per counter and period,
/// across instances; at 100% a hard stop skips the degradation policy.
@Suite struct BudgetAlertTests {
    static let budget: LimitDefinition = {
        var definition = LimitDefinition(name: "daily-spend", measure: .spend, amount: 1000, window: .day, scope: [.user])
        definition.alerts = [50, 80, 100]
        return definition
    }()

    /// Spends `units` of the budget for `user` at `now` (Unix ns) through a ledger, then lets the alerter look.
    static func spend(_ units: Int64, user: String, ledger: LimitLedger, alerter: BudgetAlerter, now: Int64) {
        let planner = LimitPlanner(definitions: [budget])
        let caller = Caller(tenant: "acme", user: user, keyID: "k")
        let demands = planner.requestDemands(caller: caller, model: "m",
                                             estimate: .init(inputTokens: 0, outputTokens: 0, spend: NanoUSD(units)))
        switch ledger.reserve(demands, lease: 1, now: now) {
        case .admitted(let reservation): alerter.observe(reservation, definitions: planner.definitions, now: now)
        case .refused(let index, _, let remaining, _): alerter.refused(demands[index], definition: budget, remaining: remaining, now: now)
        }
    }

    static func waitFor(_ count: Int, in alerts: Locked<[BudgetAlert]>) async throws {
        let deadline = ContinuousClock.now + .seconds(5)
        while alerts.withLock({ $0.count }) < count, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(5)) }
        // A moment more: an alert that should not come would come now.
        try await Task.sleep(for: .milliseconds(30))
    }

    @Test func eachThresholdAlertsOncePerCounterAndPeriod() async throws {
        let alerts = Locked<[BudgetAlert]>([])
        let alerter = BudgetAlerter(latch: InMemoryAlertLatch()) { alert in alerts.withLock { $0.append(alert) } }
        let ledger = LimitLedger()
        let day: Int64 = 86_400_000_000_000
        let now = 20_000 * day + 3_600_000_000_000
        Self.spend(400, user: "ann", ledger: ledger, alerter: alerter, now: now)  // 40%: nothing
        try await Self.waitFor(0, in: alerts)
        #expect(alerts.withLock { $0.isEmpty })
        Self.spend(150, user: "ann", ledger: ledger, alerter: alerter, now: now + 1)  // 55%: the 50% alert
        Self.spend(10, user: "ann", ledger: ledger, alerter: alerter, now: now + 2)  // 56%: already sent
        try await Self.waitFor(1, in: alerts)
        #expect(alerts.withLock { $0.map(\.threshold) } == [50])
        Self.spend(300, user: "ann", ledger: ledger, alerter: alerter, now: now + 3)  // 86%: 80% (50% is behind it)
        Self.spend(200, user: "ann", ledger: ledger, alerter: alerter, now: now + 4)  // refused: spent, 100%
        Self.spend(200, user: "ann", ledger: ledger, alerter: alerter, now: now + 5)  // refused again: already sent
        try await Self.waitFor(3, in: alerts)
        let sent = alerts.withLock { $0 }
        #expect(sent.map(\.threshold) == [50, 80, 100])
        #expect(sent[1].used == 860 && sent[1].amount == 1000 && sent[1].periodStart == 20_000 * 86400 && sent[1].periodEnd == 20_001 * 86400)
        #expect(sent[0].scope.map(\.0) == ["tenant", "user"] && sent[0].scope.map(\.1) == ["acme", "ann"])
        #expect(sent[0].json["used_usd"]?.stringValue == NanoUSD(550).usdString && sent[0].json["type"] == "budget.threshold")
        // Another user has a counter of their own; the next day, the same thresholds alert again.
        Self.spend(600, user: "bob", ledger: ledger, alerter: alerter, now: now + 6)
        Self.spend(600, user: "ann", ledger: ledger, alerter: alerter, now: now + day)
        try await Self.waitFor(5, in: alerts)
        let later = alerts.withLock { Array($0.dropFirst(3)) }
        #expect(later.count == 2 && later.allSatisfy { $0.threshold == 50 })
        #expect(later.map(\.periodStart).sorted() == [Int64(20_000 * 86400), Int64(20_001 * 86400)], "\(later.map(\.periodStart))")
    }

    @Test func instancesSharingALatchSendEachAlertOnce() async throws {
        let alerts = Locked<[BudgetAlert]>([])
        let latch = InMemoryAlertLatch()
        let ledger = LimitLedger()
        let instances = (0..<3).map { _ in BudgetAlerter(latch: latch) { alert in alerts.withLock { $0.append(alert) } } }
        let now: Int64 = 20_000 * 86_400_000_000_000
        Self.spend(900, user: "ann", ledger: ledger, alerter: instances[0], now: now)
        for instance in instances { Self.spend(1, user: "ann", ledger: ledger, alerter: instance, now: now + 1) }
        try await Self.waitFor(1, in: alerts)
        #expect(alerts.withLock { $0.map(\.threshold) } == [80])
    }

    @Test func theLatchIsBoundedAndForgetsExpiredKeys() {
        let clock = Locked<Int64>(1000)
        let latch = InMemoryAlertLatch(maximumKeys: 10, now: { clock.withLock { $0 } })
        #expect(latch.claim("a", ttlSeconds: 60) && !latch.claim("a", ttlSeconds: 60))
        for index in 0..<50 { _ = latch.claim("k\(index)", ttlSeconds: 10) }
        clock.withLock { $0 += 61 }
        #expect(latch.claim("a", ttlSeconds: 60), "expired: claimed again")
    }

    @Test func aBudgetAlertsItsWebhookSignedAndStopsHardAtItsLimit() async throws {
        let received = Locked<[(headers: [String: String], body: String)]>([])
        let port = ReadySignal<Int>()
        let receiver = EdgeServer(configuration: .init(host: "127.0.0.1", port: 0, maxBodyBytes: 1 << 20), logger: Logger(label: "hook"),
                                  onListening: { port.set($0) }) { request in
            received.withLock { list in
                list.append((Dictionary(request.head.headers.map { ($0.name.lowercased(), $0.value) }, uniquingKeysWith: { a, _ in a }),
                             String(buffer: request.body)))
            }
            return EdgeResponse(status: .noContent)
        }
        let serving = Task { try await receiver.run() }
        defer { serving.cancel() }
        let hookPort = await port.wait()
        var config = TestConfigs.embedded()
        config.cache.exactEnabled = false
        config.cache.semanticEnabled = false
        var budget = LimitDefinition(name: "team-day", measure: .spend, amount: 1_000_000, window: .day, scope: [.tenant])
        budget.alerts = [50, 100]
        budget.hardStop = true
        config.limits = [budget]
        // A policy that would answer from a cheaper model: the hard stop skips it.
        config.degrade = [DegradePolicy(steps: [.downgrade(["gpt-4o-mini"])])]
        config.alertWebhook = "http://127.0.0.1:\(hookPort)/budget"
        try await withTestGateway(config, environment: ["SWITCHYARD_WEBHOOK_SECRET": "whsec-budget"]) { _, url in
            var statuses: [Int] = []
            for index in 0..<40 {
                let body = #"{"model":"claude-haiku-4-5","max_tokens":20,"messages":[{"role":"user","content":"budget \#(index)"}]}"#
                let response = try await send("\(url)/v1/chat/completions", body: body, headers: [("authorization", "Bearer team")])
                statuses.append(response.status)
                if response.status == 429 {
                    #expect(response.header("x-switchyard-degraded") == nil && response.body.contains("team-day"), "\(response.body)")
                    break
                }
            }
            #expect(statuses.last == 429 && statuses.dropLast().allSatisfy { $0 == 200 }, "\(statuses)")
            let deadline = ContinuousClock.now + .seconds(5)
            while received.withLock({ $0.count }) < 2, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(20)) }
            try await Task.sleep(for: .milliseconds(100))
            let deliveries = received.withLock { $0 }
            #expect(deliveries.count == 2, "\(deliveries.map(\.body))")
            let payloads = try deliveries.map { try JSONValue.parse($0.body) }
            #expect(Set(payloads.compactMap { $0["threshold_percent"]?.intValue }) == [50, 100])
            for delivery in deliveries {
                let signature = try #require(delivery.headers["x-switchyard-signature"])
                #expect(WebhookSignature.verify(signature, secret: Array("whsec-budget".utf8), body: Array(delivery.body.utf8),
                                                now: Int64(Date().timeIntervalSince1970)))
                #expect(delivery.headers["x-switchyard-alert-id"]?.count == 32)
            }
            #expect(payloads.allSatisfy { $0["limit"]?.stringValue == "team-day" && $0["scope"]?["tenant"]?.stringValue?.hasPrefix("key-") == true })
            #expect(try await DegradationTests.metric(url, #"switchyard_budget_alerts_total{limit="team-day"}"#) == 2)
        }
    }

    @Test func alertConfigurationIsChecked() {
        func refused(_ limit: String, extra: String = "") -> String? {
            AttemptsThroughTheGatewayTests.refusedPath("providers: {a: {kind: mock}}\nmodels: {gpt-4o: {provider: a}}\nlimits:\n  - \(limit)\n\(extra)")
        }
        #expect(refused(#"{name: b, spend_usd: "5", per: day, alerts: [50, 80, 100], at_limit: stop}"#) == nil)
        #expect(refused(#"{name: b, spend_usd: "5", per: minute, alerts: [50]}"#) == "limits[0].alerts")
        #expect(refused(#"{name: b, spend_usd: "5", per: month, alerts: [80, 50]}"#) == "limits[0].alerts[1]")
        #expect(refused(#"{name: b, spend_usd: "5", per: month, alerts: [0]}"#) == "limits[0].alerts[0]")
        #expect(refused(#"{name: b, spend_usd: "5", per: month, alerts: [101]}"#) == "limits[0].alerts[0]")
        #expect(refused(#"{name: b, spend_usd: "5", per: month, at_limit: maybe}"#) == "limits[0].at_limit")
        #expect(refused(#"{name: b, spend_usd: "5", per: month}"#, extra: "alerts: {webhook_url: ftp://x}") == "alerts.webhook_url")
        #expect(refused(#"{name: b, spend_usd: "5", per: month}"#, extra: "alerts: {webhook_url: https://hooks.example.com/a}") == nil)
    }
}
