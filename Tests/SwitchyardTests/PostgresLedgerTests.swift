import Foundation
import Logging
import PostgresNIO
import Server
import SwitchyardCore
import SwitchyardModels
import SwitchyardTestKit
import Testing

/// A PostgreSQL server of the test's own: `initdb` in a temporary folder (as the `postgres` user when the tests run
/// as root: PostgreSQL refuses root), a free loopback port, password authentication over TCP. Installed by
/// `scripts/postgres.sh install`, which the test command runs first.
final class PostgresServerProcess: @unchecked Sendable {
    let port: Int
    let folder: URL
    static let user = "switchyard"
    static let password = "ledger-secret"
    private var process: Process?

    struct Unavailable: Error, CustomStringConvertible {
        let description: String
    }

    static var bindir: String? {
        let root = "/usr/lib/postgresql"
        let versions = ((try? FileManager.default.contentsOfDirectory(atPath: root)) ?? [])
            .sorted { $0.compare($1, options: .numeric) == .orderedAscending }
        guard let newest = versions.last else { return nil }
        let path = "\(root)/\(newest)/bin"
        return FileManager.default.isExecutableFile(atPath: "\(path)/initdb") ? path : nil
    }

    init() throws {
        guard let bindir = Self.bindir else {
            Issue.record("PostgreSQL is not installed: run scripts/postgres.sh install")
            throw Unavailable(description: "no initdb")
        }
        port = try RedisServerProcess.freePort()
        folder = FileManager.default.temporaryDirectory.appendingPathComponent("switchyard-pg-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        let data = folder.appendingPathComponent("data").path
        let passwordFile = folder.appendingPathComponent("password").path
        try Self.password.write(toFile: passwordFile, atomically: true, encoding: .utf8)
        let asRoot = getuid() == 0
        if asRoot { try Self.run("/usr/bin/chown", ["-R", "postgres:postgres", folder.path]) }
        func command(_ tool: String, _ arguments: [String]) -> (String, [String]) {
            asRoot ? ("/usr/sbin/runuser", ["-u", "postgres", "--", "\(bindir)/\(tool)"] + arguments) : ("\(bindir)/\(tool)", arguments)
        }
        let (initdb, initArguments) = command("initdb", ["-D", data, "-U", Self.user, "--pwfile", passwordFile, "--auth-host=scram-sha-256",
                                                         "--auth-local=trust", "-E", "UTF8", "--no-sync"])
        try Self.run(initdb, initArguments)
        let (postgres, arguments) = command("postgres", ["-D", data, "-p", String(port), "-h", "127.0.0.1", "-k", folder.path,
                                                         "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"])
        process = try Self.launch(postgres, arguments)
        // Ready when it accepts a login (bounded: 15 s).
        let deadline = Date().addingTimeInterval(15)
        let (ready, readyArguments) = command("pg_isready", ["-h", "127.0.0.1", "-p", String(port), "-q"])
        while Date() < deadline {
            if (try? Self.run(ready, readyArguments)) != nil { return }
            Thread.sleep(forTimeInterval: 0.05)
        }
        throw Unavailable(description: "postgres on \(port) did not start")
    }

    /// Starts `path` with its output discarded.
    static func launch(_ path: String, _ arguments: [String]) throws -> Process {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = arguments
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        return process
    }

    /// Runs `path` to its end; a failure throws.
    static func run(_ path: String, _ arguments: [String]) throws {
        let process = try launch(path, arguments)
        process.waitUntilExit()
        guard process.terminationStatus == 0 else { throw Unavailable(description: "\(path) \(arguments.first ?? "") exited \(process.terminationStatus)") }
    }

    /// Kills the server (SIGKILL: a crash). The postmaster itself, by the pid it wrote: under `runuser` the process
    /// started is not the server, and a server left running would hold the test runner's output open.
    func stop() {
        guard let process else { return }
        let pidFile = folder.appendingPathComponent("data/postmaster.pid").path
        if let text = try? String(contentsOfFile: pidFile, encoding: .utf8), let pid = text.split(separator: "\n").first.flatMap({ Int32($0) }) {
            kill(pid, SIGKILL)
            let deadline = Date().addingTimeInterval(5)
            while kill(pid, 0) == 0, Date() < deadline { Thread.sleep(forTimeInterval: 0.01) }
        }
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        self.process = nil
    }

    deinit {
        stop()
        try? FileManager.default.removeItem(at: folder)
    }

    var sink: LedgerSettings.PostgresSink {
        LedgerSettings.PostgresSink(host: "127.0.0.1", port: port, database: "postgres", user: Self.user, passwordEnv: "TEST_LEDGER_PG_PASSWORD")
    }

    /// Runs `body` with a client of this server.
    func withClient<T: Sendable>(_ body: @Sendable (PostgresClient) async throws -> T) async throws -> T {
        let client = PostgresClient(configuration: .init(host: "127.0.0.1", port: port, username: Self.user, password: Self.password,
                                                         database: "postgres", tls: .disable), backgroundLogger: Logger(label: "pg-test"))
        return try await withThrowingTaskGroup(of: T?.self) { group in
            group.addTask {
                await client.run()
                return nil
            }
            defer { group.cancelAll() }
            return try await body(client)
        }
    }
}

/// The ledger's PostgreSQL sink against a real server: the gateway creates the table, every request is a row with
/// the figures its answer carried, hostile strings arrive intact, and a server that is down costs requests nothing.
@Suite(.serialized) struct PostgresLedgerTests {
    @Test func everyRequestIsARowOfTheTableTheGatewayCreates() async throws {
        let server = try PostgresServerProcess()
        var config = TestConfigs.embedded()
        config.cache.semanticEnabled = false
        config.ledger.sink = .postgres(server.sink)
        let environment = ["TEST_LEDGER_PG_PASSWORD": PostgresServerProcess.password]
        let costs = try await withTestGateway(config, environment: environment) { gateway, url in
            var costs: [Int64] = []
            for question in ["one", "two", "one"] {
                let body = #"{"model":"gpt-4o-mini","max_tokens":20,"messages":[{"role":"user","content":"\#(question)"}]}"#
                let response = try await send("\(url)/v1/chat/completions", body: body,
                                              headers: [("authorization", "Bearer pg-key"), ("x-switchyard-feature", "sql")])
                #expect(response.status == 200)
                costs.append(NanoUSD(usd: response.header("x-switchyard-cost-usd") ?? "")?.value ?? -1)
            }
            // A model name no one configured, with a quote, a NUL and a line break in it.
            let hostile = #"{"model":"bad'); DROP TABLE switchyard_ledger;--\u0000\n","messages":[{"role":"user","content":"x"}]}"#
            #expect(try await send("\(url)/v1/chat/completions", body: hostile, headers: [("authorization", "Bearer pg-key")]).status == 404)
            await gateway.ledger?.flush()
            return costs
        }
        try await server.withClient { client in
            let rows = try await client.query("""
                SELECT feature, model, cost_nano_usd, saved_exact_nano_usd, cache, status, requested, attempts
                FROM switchyard_ledger ORDER BY time, status
                """)
            var found: [(String, String?, Int64, Int64, String?, Int32, String, Int32)] = []
            for try await row in rows.decode((String, String?, Int64, Int64, String?, Int32, String, Int32).self) { found.append(row) }
            #expect(found.count == 4, "\(found)")
            let answered = found.filter { $0.5 == 200 }
            #expect(answered.map(\.2) == costs && answered.allSatisfy { $0.0 == "sql" })
            #expect(answered.map(\.4) == ["miss", "miss", "hit-exact"] && answered[2].3 == costs[0] && answered[2].1 == nil)
            let refused = try #require(found.first { $0.5 == 404 })
            #expect(refused.6 == "bad'); DROP TABLE switchyard_ledger;--\u{FFFD}\n" && refused.7 == 0)
            // The indexes the gateway made.
            let indexes = try await client.query("SELECT indexname FROM pg_indexes WHERE tablename = 'switchyard_ledger' ORDER BY indexname")
            var names: [String] = []
            for try await name in indexes.decode(String.self) { names.append(name) }
            #expect(names == ["switchyard_ledger_tenant_time", "switchyard_ledger_time"])
        }
    }

    @Test func aServerThatIsDownCostsRequestsNothingAndIsCounted() async throws {
        let server = try PostgresServerProcess()
        server.stop()
        var config = TestConfigs.embedded()
        var sink = server.sink
        sink.timeout = .milliseconds(500)
        config.ledger.sink = .postgres(sink)
        try await withTestGateway(config, environment: ["TEST_LEDGER_PG_PASSWORD": "x"]) { gateway, url in
            let started = ContinuousClock.now
            let response = try await send("\(url)/v1/chat/completions", body: #"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#)
            #expect(response.status == 200 && ContinuousClock.now - started < .seconds(2))
            await gateway.ledger?.flush()
            let metrics = try await send("\(url)/metrics", method: "GET", contentType: nil).body
            #expect(metrics.contains(#"switchyard_state_errors_total{seam="ledger_sink"} 1"#),
                    "\(metrics.split(separator: "\n").filter { $0.contains("ledger") })")
            // The aggregates did not depend on the sink.
            let usage = try await send("\(url)/v1/usage", method: "GET", contentType: nil)
            #expect(usage.body.contains(#""requests":1"#))
        }
    }

    @Test func thePostgresSinkIsConfiguredWithoutItsSecret() throws {
        let base = LedgerConfigTests.base
        let config = try ConfigLoader.parse(yaml: base + "ledger: {sink: postgres, postgres: {host: db, port: 6543, database: spend, user: gw, password_env: LEDGER_PG}}",
                                            environment: [:])
        #expect(config.ledger.sink == .postgres(.init(host: "db", port: 6543, database: "spend", user: "gw", passwordEnv: "LEDGER_PG")))
        #expect(try ConfigLoader.parse(yaml: base + "ledger: {postgres: {host: db}}", environment: [:]).ledger.sink == .postgres(.init(host: "db")))
        for (yaml, path) in [("ledger: {sink: postgres}", "ledger.postgres"), ("ledger: {postgres: {password: hunter2}}", "ledger.postgres.password"),
                             ("ledger: {postgres: {port: 0}}", "ledger.postgres.port"), ("ledger: {postgres: {password_env: 'a b'}}", "ledger.postgres.password_env")] {
            #expect(AttemptsThroughTheGatewayTests.refusedPath(base + yaml) == path, "\(yaml)")
        }
    }
}

