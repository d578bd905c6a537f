import Foundation
import NIOCore
import NIOConcurrencyHelpers
import NIOPosix
import Redis
import Testing

/// A redis-server of the test's own, on a free loopback port in a temporary folder (installed by
/// `scripts/redis.sh install`, which the test command runs first).
final class RedisServerProcess: @unchecked Sendable {
    let port: Int
    let folder: URL
    private var process: Process?
    private let arguments: [String]

    static var binary: String? {
        if let path = ProcessInfo.processInfo.environment["SWITCHYARD_REDIS_SERVER"] { return path }
        for path in ["/usr/bin/redis-server", "/usr/local/bin/redis-server"] where FileManager.default.isExecutableFile(atPath: path) {
            return path
        }
        return nil
    }

    /// A port nobody listens on now: bound to port 0, read, released.
    static func freePort() throws -> Int {
        let group = MultiThreadedEventLoopGroup.singleton
        let channel = try ServerBootstrap(group: group).bind(host: "127.0.0.1", port: 0).wait()
        let port = channel.localAddress?.port ?? 0
        try channel.close().wait()
        return port
    }

    /// The test CA and the certificate it signed for `localhost` and 127.0.0.1 (the HTTPS upstream tests' too).
    static let tlsFixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/tls")

    /// - Parameter tls: Serve TLS only, on `port`, with the fixtures' certificate.
    init(port: Int? = nil, arguments: [String] = [], tls: Bool = false) throws {
        let port = try port ?? Self.freePort()
        self.port = port
        let tlsArguments = ["--tls-port", String(port), "--port", "0",
                            "--tls-cert-file", Self.tlsFixtures.appendingPathComponent("server.pem").path,
                            "--tls-key-file", Self.tlsFixtures.appendingPathComponent("server.key").path,
                            "--tls-ca-cert-file", Self.tlsFixtures.appendingPathComponent("ca.pem").path,
                            "--tls-auth-clients", "no"]
        folder = FileManager.default.temporaryDirectory.appendingPathComponent("switchyard-redis-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        self.arguments = (tls ? tlsArguments : []) + arguments
        try start()
    }

    func start() throws {
        guard let binary = Self.binary else {
            Issue.record("redis-server is not installed: run scripts/redis.sh install")
            throw RedisError.unavailable
        }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", folder.path, "--daemonize", "no", "--loglevel", "warning"] + arguments
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        self.process = process
        // Ready when it accepts a connection (bounded: 10 s).
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline {
            if let channel = try? ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .connect(host: "127.0.0.1", port: port).wait() {
                try? channel.close().wait()
                return
            }
            Thread.sleep(forTimeInterval: 0.02)
        }
        throw RedisError.connectFailed("redis-server on \(port) did not start")
    }

    /// Kills the server (SIGKILL: a crash, and SIGTERM may be blocked in processes the test runner starts).
    func stop() {
        guard let process else { return }
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        self.process = nil
    }

    deinit {
        stop()
        try? FileManager.default.removeItem(at: folder)
    }

    func configuration(_ change: (inout RedisConfiguration) -> Void = { _ in }) -> RedisConfiguration {
        var configuration = RedisConfiguration(host: "127.0.0.1", port: port, connectTimeout: .seconds(2),
                                               commandTimeout: .seconds(2), poolSize: 2)
        change(&configuration)
        return configuration
    }
}

/// The client against a real redis-server: the handshake (RESP3, AUTH), commands and pipelines, scripts, timeouts,
/// and recovery when the server goes away and comes back.
@Suite(.serialized) struct RedisClientTests {
    let group = MultiThreadedEventLoopGroup.singleton

    @Test func commandsPipelinesAndExpiry() async throws {
        let server = try RedisServerProcess()
        let client = RedisClient(configuration: server.configuration(), group: group)
        defer { Task { await client.close() } }
        #expect(try await client.send(["SET", "k", .bytes([0, 1, 255]), "PX", "60000"]) == .simpleString("OK"))
        #expect(try await client.send(["GET", "k"]) == .bulkString([0, 1, 255]))
        #expect(try await client.send(["GET", "missing"]) == .null)
        // RESP3: a map, not a flat array.
        try await client.send(["HSET", "h", "a", "1"])
        #expect(try await client.send(["HGETALL", "h"]) == .map([.init(.bulkString(Array("a".utf8)), .bulkString(Array("1".utf8)))]))
        // A thousand commands written at once, answered in order; an error reply stays in its place.
        var commands: [[RedisArgument]] = (0..<1000).map { _ in ["INCR", "counter"] }
        commands.insert(["HGET", "k", "x"], at: 500)
        let replies = try await client.pipeline(commands)
        #expect(replies.count == 1001)
        #expect(replies[0] == .integer(1) && replies[999] == .integer(999) && replies[1000] == .integer(1000))
        if case .error(let error) = replies[500] { #expect(error.code == "WRONGTYPE") } else { Issue.record("\(replies[500])") }
        // An error reply thrown by send.
        await #expect(throws: RedisError.self) { try await client.send(["HGET", "k", "x"]) }
        // Expiry in milliseconds.
        try await client.send(["SET", "short", "v", "PX", "50"])
        try await Task.sleep(for: .milliseconds(120))
        #expect(try await client.send(["GET", "short"]) == .null)
        // Many callers at once share the pool's pipelined connections.
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            for index in 0..<200 {
                tasks.addTask {
                    try await client.send(["SET", .string("key\(index)"), .integer(index)])
                    #expect(try await client.send(["GET", .string("key\(index)")]).string == String(index))
                }
            }
            try await tasks.waitForAll()
        }
    }

    @Test func scriptsLoadOnNoscript() async throws {
        let server = try RedisServerProcess()
        let client = RedisClient(configuration: server.configuration(), group: group)
        defer { Task { await client.close() } }
        let script = RedisScript("return redis.call('INCRBY', KEYS[1], ARGV[1])")
        #expect(try await client.evaluate(script, keys: ["{t}n"], arguments: ["5"]) == .integer(5))
        // The server forgets its scripts (as after a restart): the next call loads it again.
        try await client.send(["SCRIPT", "FLUSH"])
        #expect(try await client.evaluate(script, keys: ["{t}n"], arguments: ["2"]) == .integer(7))
    }

    @Test func authenticationFromCredentials() async throws {
        let server = try RedisServerProcess(arguments: ["--requirepass", "s3cret"])
        let refused = RedisClient(configuration: server.configuration(), group: group)
        await #expect(throws: RedisError.self) { try await refused.send(["GET", "k"]) }
        await refused.close()
        let wrong = RedisClient(configuration: server.configuration { $0.password = "nope" }, group: group)
        do {
            try await wrong.send(["PING"])
            Issue.record("a wrong password was accepted")
        } catch {
            guard case .handshakeFailed(let message) = error else { Issue.record("\(error)"); return }
            #expect(!message.contains("nope"), "the password is not in the error")
        }
        await wrong.close()
        let right = RedisClient(configuration: server.configuration { $0.password = "s3cret" }, group: group)
        #expect(try await right.send(["PING"]) == .simpleString("PONG"))
        await right.close()
    }

    @Test func tlsWithTheServersCertificateTrustedAndRefusedOtherwise() async throws {
        // Also on 127.0.0.2, an address the certificate does not name.
        let server = try RedisServerProcess(arguments: ["--bind", "127.0.0.1", "127.0.0.2"], tls: true)
        let ca = RedisServerProcess.tlsFixtures.appendingPathComponent("ca.pem").path
        // By address (checked against the certificate's IP entry) and by name (SNI, checked against its DNS entry).
        for host in ["127.0.0.1", "localhost"] {
            let client = RedisClient(configuration: server.configuration { $0.host = host; $0.tls = RedisTLS(caFile: ca) }, group: group)
            #expect(try await client.send(["SET", "k", "v"]) == .simpleString("OK"))
            #expect(try await client.send(["GET", "k"]).string == "v")
            let replies = try await client.pipeline((0..<100).map { _ in ["INCR", "n"] })
            #expect(replies.last == .integer(host == "localhost" ? 200 : 100))
            await client.close()
        }
        // The system's roots do not include the test CA: refused, and said to be TLS.
        let untrusted = RedisClient(configuration: server.configuration { $0.tls = RedisTLS() }, group: group)
        do {
            try await untrusted.send(["PING"])
            Issue.record("a certificate from an unknown CA was accepted")
        } catch {
            #expect(error.code == "tls_failed", "\(error)")
        }
        await untrusted.close()
        // A name the certificate does not hold.
        let wrongName = RedisClient(configuration: server.configuration { $0.host = "127.0.0.2"; $0.tls = RedisTLS(caFile: ca) }, group: group)
        do {
            try await wrongName.send(["PING"])
            Issue.record("a certificate for another address was accepted")
        } catch {
            #expect(error.code == "tls_failed", "\(error)")
        }
        await wrongName.close()
        // Plain RESP to the TLS port fails within the timeouts rather than hanging.
        let plain = RedisClient(configuration: server.configuration { $0.commandTimeout = .milliseconds(500) }, group: group)
        let started = ContinuousClock.now
        await #expect(throws: RedisError.self) { try await plain.send(["PING"]) }
        #expect(ContinuousClock.now - started < .seconds(3))
        await plain.close()
        // A CA file that is not PEM: a TLS error on connect, not a crash.
        let bogus = server.folder.appendingPathComponent("bogus.pem")
        try Data("not a certificate".utf8).write(to: bogus)
        let broken = RedisClient(configuration: server.configuration { $0.tls = RedisTLS(caFile: bogus.path) }, group: group)
        do {
            try await broken.send(["PING"])
            Issue.record("a bogus CA file was accepted")
        } catch {
            #expect(error.code == "tls_failed" || error.code == "connect_failed", "\(error)")
        }
        await broken.close()
    }

    @Test func aSlowReplyTimesOutAndTheNextCommandReconnects() async throws {
        let server = try RedisServerProcess(arguments: ["--enable-debug-command", "yes"])
        let client = RedisClient(configuration: server.configuration { $0.commandTimeout = .milliseconds(200); $0.poolSize = 1 },
                                 group: group)
        defer { Task { await client.close() } }
        let started = ContinuousClock.now
        do {
            try await client.send(["DEBUG", "SLEEP", "1"])
            Issue.record("no timeout")
        } catch {
            #expect(error == .timeout)
        }
        #expect(ContinuousClock.now - started < .milliseconds(900))
        // The timed-out connection was closed; the next command gets a new one (the server is busy until its sleep
        // ends, and the new connection's command waits for that within its own timeout).
        try await Task.sleep(for: .milliseconds(900))
        #expect(try await client.send(["PING"]) == .simpleString("PONG"))
    }

    @Test func aSubscriptionReceivesMessagesAndResubscribesAfterTheServerComesBack() async throws {
        let server = try RedisServerProcess()
        let client = RedisClient(configuration: server.configuration { $0.connectTimeout = .milliseconds(300) }, group: group)
        let received = NIOLockedValueBox<[String]>([])
        let subscribed = NIOLockedValueBox(0)
        let subscription = client.subscribe(["events"], onSubscribed: { subscribed.withLockedValue { $0 += 1 } }) { channel, payload in
            received.withLockedValue { $0.append("\(channel):\(String(decoding: payload, as: UTF8.self))") }
        }
        func waitFor(_ condition: @Sendable () -> Bool) async throws -> Bool {
            for _ in 0..<200 {
                if condition() { return true }
                try await Task.sleep(for: .milliseconds(25))
            }
            return false
        }
        #expect(try await waitFor { subscribed.withLockedValue { $0 } == 1 })
        // The subscribed connection still answers its confirmation in order; a publish reaches it.
        #expect(try await client.send(["PUBLISH", "events", "one"]) == .integer(1))
        #expect(try await client.send(["PUBLISH", "other", "ignored"]) == .integer(0))
        #expect(try await waitFor { received.withLockedValue { $0 } == ["events:one"] })
        // The server dies and comes back: the subscription is made again, and says so.
        server.stop()
        try server.start()
        #expect(try await waitFor { subscribed.withLockedValue { $0 } == 2 }, "resubscribed within 5 s")
        var delivered = false
        for _ in 0..<50 where !delivered {
            delivered = (try? await client.send(["PUBLISH", "events", "two"])) == .integer(1)
            if !delivered { try await Task.sleep(for: .milliseconds(50)) }
        }
        #expect(try await waitFor { received.withLockedValue { $0 }.last == "events:two" })
        await subscription.cancel()
        #expect(try await client.send(["PUBLISH", "events", "three"]) == .integer(0), "cancelled: nobody listens")
        await client.close()
    }

    @Test func streamsWithConsumerGroupsWorkThroughTheClient() async throws {
        let server = try RedisServerProcess()
        let client = RedisClient(configuration: server.configuration(), group: group)
        try await client.send(["XGROUP", "CREATE", "{q}jobs", "workers", "$", "MKSTREAM"])
        let id = try await client.send(["XADD", "{q}jobs", "MAXLEN", "~", "10000", "*", "job", "j1"]).string
        #expect(id?.contains("-") == true)
        // A consumer reads it and dies before XACK; another claims it after the idle time.
        let read = try await client.send(["XREADGROUP", "GROUP", "workers", "a", "COUNT", "10", "STREAMS", "{q}jobs", ">"])
        // RESP3: a map from stream name to its entries.
        let entries = read.pairs?.first?.value.elements ?? []
        #expect(entries.count == 1 && entries.first?.elements?.first?.string == id)
        try await Task.sleep(for: .milliseconds(60))
        let claimed = try await client.send(["XAUTOCLAIM", "{q}jobs", "workers", "b", "50", "0", "COUNT", "10"])
        #expect(claimed.elements?[1].elements?.first?.elements?.first?.string == id)
        #expect(try await client.send(["XACK", "{q}jobs", "workers", .string(id ?? "")]) == .integer(1))
        await client.close()
    }

    @Test func aServerGoneFailsFastAndComingBackRecovers() async throws {
        let server = try RedisServerProcess()
        let client = RedisClient(configuration: server.configuration { $0.connectTimeout = .milliseconds(500) }, group: group)
        defer { Task { await client.close() } }
        #expect(try await client.send(["PING"]) == .simpleString("PONG"))
        server.stop()
        let started = ContinuousClock.now
        for _ in 0..<20 {
            await #expect(throws: RedisError.self) { try await client.send(["PING"]) }
        }
        // Refused connections and backoff: twenty calls fail within the connect timeout, none hangs.
        #expect(ContinuousClock.now - started < .seconds(2))
        try server.start()
        // Back after the backoff (at most 5 s).
        let deadline = ContinuousClock.now + .seconds(8)
        var recovered = false
        while ContinuousClock.now < deadline {
            if (try? await client.send(["PING"])) == .simpleString("PONG") { recovered = true; break }
            try await Task.sleep(for: .milliseconds(50))
        }
        #expect(recovered)
    }
}
