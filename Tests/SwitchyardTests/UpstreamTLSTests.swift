import Foundation
import NIOCore
import Server
import SwitchyardCore
import SwitchyardTestKit
import Testing

/// HTTPS upstreams go through the same exact client as plain ones: answers on reused connections, certificates
/// checked against the configured roots and the upstream's name, a handshake that never ends bounded by the
/// connect timeout. (The hostile-upstream tests run their pooling and stall cases over HTTPS too.)
@Suite struct UpstreamTLSTests {
    @Test func answersArriveOverHTTPSOnOneReusedConnection() async throws {
        try await HostileUpstreamTests.withUpstream(tls: true, { request in
            request.stream
                ? [.write(HostileUpstream.streamHead() + HostileUpstream.textEvent("tls-\(request.marker)") + HostileUpstream.streamEnd())]
                : [.write(HostileUpstream.completion(request))]
        }) { upstream, _, url in
            #expect(upstream.baseURL.hasPrefix("https://localhost:"))
            for index in 0..<5 {
                let response = try await send("\(url)/v1/chat/completions", body: HostileUpstreamTests.body("seq\(index)"))
                #expect(response.status == 200, "\(response.body)")
                #expect(response.body.contains("answer-seq\(index)\""), "\(response.body)")
            }
            let streamed = try await send("\(url)/v1/chat/completions", body: HostileUpstreamTests.body("s", stream: true))
            #expect(streamed.status == 200)
            #expect(streamed.body.contains("tls-s") && streamed.body.contains("[DONE]"), "\(streamed.body)")
            #expect(upstream.connections == 1)
        }
    }

    @Test func aCertificateOutsideTheTrustedRootsIsRefused() async throws {
        // The system's roots (no `tls_ca_file`) do not include the test CA.
        try await HostileUpstreamTests.withUpstream(tls: true, { request in [.write(HostileUpstream.completion(request))] },
                                                    configure: { $0.providers["hostile"]?.tlsCAFile = nil }) { upstream, _, url in
            let response = try await send("\(url)/v1/chat/completions", body: HostileUpstreamTests.body("untrusted"))
            #expect(response.status == 502, "\(response.body)")
            #expect(response.body.contains("cannot reach upstream"))
            #expect(!response.body.contains("answer-untrusted"))
            #expect(upstream.counts.withLock { $0.requests } == 0)
        }
    }

    @Test func aCertificateForAnotherNameIsRefused() async throws {
        // The certificate names localhost and 127.0.0.1, not 127.0.0.2.
        try await HostileUpstreamTests.withUpstream(tls: true, host: "127.0.0.2", { request in
            [.write(HostileUpstream.completion(request))]
        }) { upstream, _, url in
            #expect(upstream.baseURL.hasPrefix("https://127.0.0.2:"))
            let response = try await send("\(url)/v1/chat/completions", body: HostileUpstreamTests.body("other-name"))
            #expect(response.status == 502, "\(response.body)")
            #expect(upstream.counts.withLock { $0.requests } == 0)
        }
    }

    @Test func aHandshakeThatNeverEndsFailsAtTheConnectTimeout() async throws {
        // A plain server that reads the ClientHello and never answers it.
        try await HostileUpstreamTests.withUpstream({ _ in [] }, configure: { config in
            let plain = config.providers["hostile"]?.baseURL ?? ""
            config.providers["hostile"]?.baseURL = plain.replacingOccurrences(of: "http://", with: "https://")
            config.providers["hostile"]?.tlsCAFile = HostileUpstream.testCAFile
        }, timeouts: ProviderTimeouts(connect: .milliseconds(300), total: .seconds(60))) { upstream, _, url in
            let started = ContinuousClock.now
            let response = try await send("\(url)/v1/chat/completions", body: HostileUpstreamTests.body("hello"))
            #expect(response.status == 502, "\(response.body)")
            #expect(ContinuousClock.now - started < .seconds(5))
            #expect(upstream.connections == 1)
        }
    }
}
