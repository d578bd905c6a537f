import Foundation
import NIOCore
import NIOPosix
import Server
import SwitchyardCore
import SwitchyardModels
import SwitchyardTestKit
import Testing

/// Requests an attacker would send: numbers at the edges of their types, in every place a number is read.
@Suite struct HostileClientTests {
    @Test func savingsWindowsOutOfRangeAreA400NamingTheParameter() async throws {
        try await withTestGateway { _, url in
            for (query, parameter) in [
                ("to=-9223372036854775808", "to"), ("from=-1", "from"), ("to=9223372036854775807", "to"),
                ("from=abc", "from"), ("to=1e9", "to"), ("from=99999999999999999999", "from"),
            ] {
                let response = try await send("\(url)/v1/usage/savings?\(query)", method: "GET", body: nil)
                #expect(response.status == 400, "\(query)")
                #expect(try JSONValue.parse(response.body)["error"]?["param"]?.stringValue == parameter, "\(query)")
            }
            #expect(try await send("\(url)/v1/usage/savings?from=0&to=253402300799", method: "GET", body: nil).status == 200)
            #expect(try await send("\(url)/v1/usage/savings?to=0", method: "GET", body: nil).status == 200)
        }
    }

    @Test func aCacheTTLThatIsNotASaneNumberIsA400() async throws {
        try await withTestGateway { _, url in
            let body = #"{"model":"gpt-4o-mini","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#
            for value in ["nan", "inf", "-1", "1e400", "99999999999", "soon"] {
                let response = try await send("\(url)/v1/chat/completions", body: body, headers: [("x-switchyard-cache-ttl", value)])
                #expect(response.status == 400, "\(value)")
                #expect(try JSONValue.parse(response.body)["error"]?["param"]?.stringValue == "x-switchyard-cache-ttl")
            }
            let fine = try await send("\(url)/v1/chat/completions", body: body, headers: [("x-switchyard-cache-ttl", "30")])
            #expect(fine.status == 200)
        }
    }

    @Test func extremeNumbersToTheMockNeverCrashIt() async throws {
        try await withTestGateway { gateway, url in
            // Through the gateway (which validates max_tokens) and straight to the mock (which must survive alone).
            for (extra, status) in [(#""seed":9223372036854775807"#, 200), (#""seed":-9223372036854775808"#, 200),
                                    (#""seed":1e300"#, 400), (#""seed":1.5"#, 400)] {
                let body = #"{"model":"gpt-4o-mini","max_tokens":5,\#(extra),"messages":[{"role":"user","content":"hi"}]}"#
                let response = try await send("\(url)/v1/chat/completions", body: body)
                #expect(response.status == status, "\(extra)")
                if status == 400 { #expect(try JSONValue.parse(response.body)["error"]?["param"]?.stringValue == "seed") }
            }
            let mock = try #require(gateway.mockURL.value)
            for extra in [#""seed":1e300,"max_tokens":-5"#, #""max_tokens":1e300"#, #""max_completion_tokens":-1e300"#,
                          #""max_tokens":9223372036854775807,"seed":-1e19"#] {
                let body = #"{"model":"gpt-4o-mini",\#(extra),"messages":[{"role":"user","content":"hi"}]}"#
                let response = try await send("\(mock)/v1/chat/completions", body: body)
                #expect([200, 400].contains(response.status), "\(extra)")
            }
            #expect(try await send("\(url)/healthz", method: "GET", body: nil).status == 200)
        }
    }

    @Test func aHugeRequestDoesNotStallOtherConnections() async throws {
        try await withTestGateway { _, url in
            // 50,000 messages, about 1.7 MB: parsing, hashing and forwarding it take long enough to see on a loop.
            let messages = (0..<50_000).map { #"{"role":"\#($0 % 2 == 0 ? "user" : "assistant")","content":"hello there"}"# }
            let body = #"{"model":"gpt-4o-mini","max_tokens":5,"messages":["# + messages.joined(separator: ",") + "]}"
            let port = try #require(Int(url.split(separator: ":").last ?? ""))
            // Several connections, so that some share the big request's event loop.
            let probes = try (0..<6).map { _ in try RawConnection(port: port) }
            let finished = Locked(false)
            let big = Task {
                defer { finished.withLock { $0 = true } }
                return try await send("\(url)/v1/chat/completions", body: body)
            }
            var slowest = Duration.zero
            var rounds = 0
            while !finished.withLock({ $0 }) && rounds < 1000 {
                for probe in probes {
                    let started = ContinuousClock.now
                    try probe.send("GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
                    _ = try await probe.receive(until: { $0.hasSuffix("ok\n") })
                    slowest = max(slowest, ContinuousClock.now - started)
                }
                rounds += 1
                try await Task.sleep(for: .milliseconds(20))
            }
            #expect(rounds > 3, "the big request was answered before it could be observed")
            let response = try await big.value
            #expect(response.status == 200)
            #expect(slowest < .milliseconds(500), "slowest /healthz beside the big request: \(slowest)")
        }
    }
}
