import Foundation
import Limits
import NIOCore
import NIOPosix
import Redis
import Server
import Stores
import SwitchyardCore
import SwitchyardModels
import SwitchyardTestKit
import Testing

/// The ledger's aggregates in Redis: what one instance wrote every instance reports.
@Suite(.serialized) struct SharedLedgerTests {
    @Test func aggregatesAreKeptPerMinuteAndKeyInRedisWithAwkwardNames() async throws {
        let server = try RedisServerProcess()
        let client = RedisClient(configuration: server.configuration(), group: .singletonMultiThreadedEventLoopGroup)
        let base: Int64 = 1_790_000_000 / 3600 * 3600 + 3540  // a minute before the hour
        let store = RedisUsageStore(client: client, keyPrefix: "u:", now: { base + 120 })
        func totals(_ requests: Int64, cost: Int64) -> UsageTotals {
            var totals = UsageTotals()
            totals.add(.requests, requests)
            totals.add(.cost, cost)
            return totals
        }
        let odd = UsageKey(minute: base / 60, tenant: "a|b", user: "50%|off=on", feature: "f", model: "m")
        let next = UsageKey(minute: base / 60 + 1, tenant: "a|b", user: "plain", feature: "f", model: "-")
        let other = UsageKey(minute: base / 60, tenant: "c", user: "u", feature: "g", model: "m")
        try await store.add([odd: totals(2, cost: 30), next: totals(1, cost: 5), other: totals(1, cost: 1)])
        try await store.add([odd: totals(1, cost: -4)])
        let all = try await store.usage(from: base - 600, to: base + 600, tenant: nil)
        #expect(all[odd]?[.requests] == 3 && all[odd]?[.cost] == 26, "\(all)")
        #expect(all[next]?[.requests] == 1 && all[other]?[.cost] == 1 && all.count == 3)
        // One tenant, one minute (the next hour's hash not read into it).
        let first = try await store.usage(from: base, to: base + 59, tenant: "a|b")
        #expect(first.keys.map(\.user) == ["50%|off=on"])
        await client.close()
    }

    @Test func everyInstanceReportsTheSameUsage() async throws {
        let server = try RedisServerProcess()
        let config = SharedStateTests.config(redisPort: server.port)
        let environment = ["SWITCHYARD_ADMIN_KEY": "admin-secret"]
        try await withTestGateway(config, environment: environment) { first, a in
            try await withTestGateway(config, environment: environment) { second, b in
                try await withTestGateway(config, environment: environment) { third, c in
                    // Twelve requests of one caller spread over the three, in two features.
                    for index in 0..<12 {
                        let url = [a, b, c][index % 3]
                        let body = #"{"model":"gpt-4o-mini","max_tokens":30,"messages":[{"role":"user","content":"question \#(index)"}]}"#
                        let response = try await send("\(url)/v1/chat/completions", body: body,
                                                      headers: [("authorization", "Bearer shared"), ("x-switchyard-feature", index < 8 ? "chat" : "code")])
                        #expect(response.status == 200)
                    }
                    for gateway in [first, second, third] { await gateway.ledger?.flush() }
                    var reports: [JSONValue] = []
                    for url in [a, b, c] {
                        let response = try await send("\(url)/v1/usage?group_by=feature", method: "GET",
                                                      headers: [("authorization", "Bearer shared")], contentType: nil)
                        #expect(response.status == 200)
                        reports.append(try JSONValue.parse(Array(response.body.utf8)))
                    }
                    #expect(reports[0]["total"]?["requests"]?.intValue == 12, "\(reports[0])")
                    #expect(reports[0]["rows"] == reports[1]["rows"] && reports[1]["rows"] == reports[2]["rows"])
                    let chat = reports[0]["rows"]?.arrayValue?.first { $0["feature"]?.stringValue == "chat" }
                    #expect(chat?["requests"]?.intValue == 8 && (chat?["cost_nano_usd"]?.intValue ?? 0) > 0)
                }
            }
        }
    }

    @Test func ofInstancesOnOneRedisOneSendsEachBudgetAlert() async throws {
        let server = try RedisServerProcess()
        let client = RedisClient(configuration: server.configuration(), group: .singletonMultiThreadedEventLoopGroup)
        let alerts = Locked<[BudgetAlert]>([])
        // Each instance its own alerter and ledger view; the latch is the shared part.
        let instances = (0..<3).map { _ in
            BudgetAlerter(latch: RedisAlertLatch(client: client, keyPrefix: "a:")) { alert in alerts.withLock { $0.append(alert) } }
        }
        let ledger = LimitLedger()
        let now: Int64 = 20_000 * 86_400_000_000_000
        BudgetAlertTests.spend(900, user: "ann", ledger: ledger, alerter: instances[0], now: now)
        for instance in instances { BudgetAlertTests.spend(1, user: "ann", ledger: ledger, alerter: instance, now: now + 1) }
        try await BudgetAlertTests.waitFor(1, in: alerts)
        try await Task.sleep(for: .milliseconds(100))
        #expect(alerts.withLock { $0.map(\.threshold) } == [80])
        let keys = try await client.send(["KEYS", "a:alert:*"])
        #expect(keys.elements?.count == 1)
        let ttl = try await client.send(["TTL", .string(keys.elements?.first?.string ?? "")])
        #expect((ttl.integer ?? 0) > 86400, "kept past the period's end")
        await client.close()
    }
}
