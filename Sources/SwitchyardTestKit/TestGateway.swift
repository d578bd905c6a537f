import AsyncHTTPClient
import Logging
import NIOCore
import NIOHTTP1
public import Server
public import SwitchyardCore

/// Runs a gateway (with its in-process mock) on loopback port 0 for the duration of `body`.
public func withTestGateway<T: Sendable>(
    _ config: GatewayConfig = TestConfigs.embedded(),
    environment: [String: String] = [:],
    embeddings: EmbeddingsSetting = .disabled,
    _ body: @Sendable (_ gateway: Gateway, _ baseURL: String) async throws -> T
) async throws -> T {
    var logger = Logger(label: "test-gateway")
    logger.logLevel = .critical
    let gateway = try buildGateway(config: config, logger: logger, environment: environment, embeddings: embeddings)
    return try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask {
            try await gateway.run(handleSignals: false)
            return nil
        }
        let port = await gateway.listening.wait()
        let result = try await body(gateway, "http://127.0.0.1:\(port)")
        group.cancelAll()
        while let _ = try? await group.next() {}
        return result
    }
}

/// Configurations used across tests.
public enum TestConfigs {
    /// The embedded default on port 0 with an instant mock.
    public static func embedded() -> GatewayConfig {
        var config = GatewayConfig.embeddedDefault()
        config.port = 0
        config.mockLatencyScale = 0
        return config
    }

    /// The embedded default plus a `faulty-*` model per mock fault, each on a provider that sends `x-mock-fault`.
    public static func withFaults(_ faults: [String], timeouts: ProviderTimeouts = ProviderTimeouts()) -> GatewayConfig {
        var config = embedded()
        for fault in faults {
            let provider = "mock-\(fault)"
            config.providers[provider] = ProviderConfig(name: provider, kind: .mock, baseURL: "", timeouts: timeouts,
                                                        headers: ["x-mock-fault": fault])
            for base in ["gpt-4o-mini", "claude-haiku-4-5"] {
                let name = "\(base)-\(fault)"
                config.models[name] = ModelRoute(name: name, provider: provider, upstreamModel: base,
                                                 price: config.models[base]!.price)
            }
        }
        return config
    }
}

/// A response read whole, for assertions.
public struct TestResponse: Sendable {
    public var status: Int
    public var headers: [(String, String)]
    public var body: String

    public func header(_ name: String) -> String? {
        headers.first { $0.0.lowercased() == name.lowercased() }?.1
    }
}

/// A client that hands redirects back instead of following them (to read a 303's own headers).
private let noRedirectClient = HTTPClient(eventLoopGroupProvider: .singleton,
                                          configuration: HTTPClient.Configuration(redirectConfiguration: .disallow))

/// Sends one request with the shared `HTTPClient` and reads the whole body.
public func send(_ url: String, method: String = "POST", body: String? = nil, headers: [(String, String)] = [],
                 contentType: String? = "application/json", followRedirects: Bool = true) async throws -> TestResponse {
    var request = HTTPClientRequest(url: url)
    request.method = .init(rawValue: method)
    if let contentType { request.headers.add(name: "content-type", value: contentType) }
    for (name, value) in headers { request.headers.add(name: name, value: value) }
    if let body { request.body = .bytes(ByteBuffer(string: body)) }
    let response = try await (followRedirects ? HTTPClient.shared : noRedirectClient).execute(request, timeout: .seconds(30))
    let collected = try await response.body.collect(upTo: 64 << 20)
    return TestResponse(status: Int(response.status.code), headers: response.headers.map { ($0.name, $0.value) },
                        body: String(buffer: collected))
}
