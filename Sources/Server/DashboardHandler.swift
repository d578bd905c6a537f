import HTTPEdge
import HTTPTypes
import NIOCore
import NIOHTTP1
import Stages
import SwitchyardCore
import SwitchyardModels
import Synchronization

/// Dashboard sessions: random tokens, each with its own CSRF token, expiring after `lifetime`; at most
/// `maximumSessions` (the oldest go first). Failed logins are limited per minute, whoever sends them.
final class DashboardSessions: Sendable {
    struct Session {
        var csrf: String
        var expires: Int64
    }

    private struct State {
        var sessions: [String: Session] = [:]
        var failures: (minute: Int64, count: Int) = (0, 0)
    }

    private let state = Mutex(State())
    let lifetime: Int64
    let maximumSessions: Int
    static let failuresPerMinute = 20

    init(lifetime: Int64 = 12 * 3600, maximumSessions: Int = 1000) {
        self.lifetime = lifetime
        self.maximumSessions = maximumSessions
    }

    static func token() -> String {
        var generator = SystemRandomNumberGenerator()
        return (0..<4).map { _ in String(generator.next() as UInt64, radix: 16).leftPadded(to: 16) }.joined()
    }

    func open(now: Int64) -> (token: String, session: Session) {
        let token = Self.token()
        let session = Session(csrf: Self.token(), expires: now + lifetime)
        let maximum = maximumSessions
        state.withLock { state in
            state.sessions = state.sessions.filter { $0.value.expires > now }
            while state.sessions.count >= maximum, let oldest = state.sessions.min(by: { $0.value.expires < $1.value.expires }) {
                state.sessions[oldest.key] = nil
            }
            state.sessions[token] = session
        }
        return (token, session)
    }

    func session(_ token: String?, now: Int64) -> Session? {
        guard let token, token.utf8.count == 64 else { return nil }
        return state.withLock { state in
            guard let session = state.sessions[token], session.expires > now else { return nil }
            return session
        }
    }

    func close(_ token: String) {
        state.withLock { $0.sessions[token] = nil }
    }

    /// Counts a failed login; false when this minute's allowance is spent (the caller answers 429).
    func failed(now: Int64) -> Bool {
        state.withLock { state in
            let minute = now / 60
            if state.failures.minute != minute { state.failures = (minute, 0) }
            state.failures.count += 1
            return state.failures.count <= Self.failuresPerMinute
        }
    }

    func loginsRefused(now: Int64) -> Bool {
        state.withLock { $0.failures.minute == now / 60 && $0.failures.count >= Self.failuresPerMinute }
    }
}

extension String {
    func leftPadded(to width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}

/// `/dashboard`: the admin's view of spend, savings, caches, routes, latency, errors, limits, queues and deployments.
/// Plain HTML, CSS and a little JavaScript served from here (no external fetch), charts drawn as SVG, refreshed every
/// five seconds from `/dashboard/data`.
///
/// Only the admin key opens it: a login form posts the key (never in a URL) and gets a session cookie (`HttpOnly`,
/// `SameSite=Strict`, `Secure` behind TLS, path `/dashboard`). The login form carries a CSRF token bound to a cookie,
/// logout the session's own; a request whose `Origin` is another site is refused. Every page forbids framing and
/// scripts from anywhere else (`Content-Security-Policy`).
struct DashboardHandler: Sendable {
    let adminKeyHash: String?
    let sessions: DashboardSessions
    let usage: any UsageStore
    let live: LiveStats?
    let queues: @Sendable () -> [String: [Priority: Int]]
    let breakers: @Sendable () -> [String: String]
    /// Unix seconds now.
    let clock: @Sendable () -> Int64

    static let sessionCookie = "sy_session"
    static let csrfCookie = "sy_csrf"

    func handle(_ request: EdgeRequest) async -> EdgeResponse {
        let now = clock()
        switch (request.method, request.path) {
        case (.GET, "/dashboard"), (.GET, "/dashboard/"):
            if let session = sessions.session(Self.cookie(request, Self.sessionCookie), now: now) {
                return page(Self.html.replacing("{{csrf}}", with: session.csrf), type: "text/html; charset=utf-8")
            }
            return loginPage(request, error: nil, status: .ok)
        case (.POST, "/dashboard/login"): return login(request, now: now)
        case (.POST, "/dashboard/logout"): return logout(request, now: now)
        case (.GET, "/dashboard/data"):
            guard sessions.session(Self.cookie(request, Self.sessionCookie), now: now) != nil else { return Self.unauthorized() }
            return await data(request, now: now)
        case (.GET, "/dashboard/app.js"):
            guard sessions.session(Self.cookie(request, Self.sessionCookie), now: now) != nil else { return Self.unauthorized() }
            return page(DashboardAssets.script, type: "text/javascript; charset=utf-8")
        case (.GET, "/dashboard/app.css"): return page(DashboardAssets.style, type: "text/css; charset=utf-8")
        default:
            return ErrorRenderer.response(for: GatewayError(.notFound, "no endpoint \(request.method.rawValue) \(request.path)"),
                                          format: .openAI, requestID: ChatHandler.makeRequestID())
        }
    }

    // MARK: Pages

    /// `same-origin` referrers rather than none: with `no-referrer`, a browser sends `Origin: null` on the forms' posts.
    static let securityHeaders: [(HTTPField.Name, String)] = [
        ("content-security-policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
            + "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
        ("x-frame-options", "DENY"), ("x-content-type-options", "nosniff"), ("referrer-policy", "same-origin"),
        ("cache-control", "no-store"),
    ].compactMap { name, value in HTTPField.Name(name).map { ($0, value) } }

    func page(_ text: String, type: String, status: HTTPResponse.Status = .ok, cookies: [String] = []) -> EdgeResponse {
        var headers = HTTPFields()
        headers[.contentType] = type
        for (name, value) in Self.securityHeaders { headers[name] = value }
        for cookie in cookies { headers.append(HTTPField(name: .setCookie, value: cookie)) }
        return EdgeResponse(status: status, headers: headers, body: .buffer(ByteBuffer(string: text)))
    }

    static func unauthorized() -> EdgeResponse {
        ErrorRenderer.response(for: GatewayError(.unauthenticated, "log in at /dashboard with the admin key"), format: .openAI,
                               requestID: ChatHandler.makeRequestID())
    }

    /// The login form, with a fresh CSRF token in a hidden field and a cookie.
    func loginPage(_ request: EdgeRequest, error: String?, status: HTTPResponse.Status) -> EdgeResponse {
        let csrf = DashboardSessions.token()
        let message = error.map { "<p class=\"error\" id=\"login-error\">\(Self.escape($0))</p>" } ?? ""
        let html = Self.loginHTML.replacing("{{csrf}}", with: csrf).replacing("{{error}}", with: message)
        let cookie = "\(Self.csrfCookie)=\(csrf); Path=/dashboard; HttpOnly; SameSite=Strict\(Self.secure(request) ? "; Secure" : "")"
        return page(html, type: "text/html; charset=utf-8", status: status, cookies: [cookie])
    }

    func login(_ request: EdgeRequest, now: Int64) -> EdgeResponse {
        guard sameOrigin(request) else { return loginPage(request, error: "This form must be sent from the dashboard itself.", status: .forbidden) }
        if sessions.loginsRefused(now: now) {
            return loginPage(request, error: "Too many failed logins: try again in a minute.", status: .tooManyRequests)
        }
        let form = Self.form(request.body)
        guard let csrf = form["csrf"], let expected = Self.cookie(request, Self.csrfCookie), Self.constantTimeEqual(csrf, expected) else {
            return loginPage(request, error: "The form expired: try again.", status: .forbidden)
        }
        guard let adminKeyHash else {
            return loginPage(request, error: "The dashboard needs SWITCHYARD_ADMIN_KEY to be set.", status: .forbidden)
        }
        guard let key = form["key"], !key.isEmpty, Self.constantTimeEqual(KeyHash.sha256Hex(key), adminKeyHash) else {
            _ = sessions.failed(now: now)
            return loginPage(request, error: "That is not the admin key.", status: .unauthorized)
        }
        let (token, _) = sessions.open(now: now)
        let secure = Self.secure(request) ? "; Secure" : ""
        var headers = HTTPFields()
        headers[.location] = "/dashboard"
        headers[.cacheControl] = "no-store"
        headers.append(HTTPField(name: .setCookie, value: "\(Self.sessionCookie)=\(token); Path=/dashboard; HttpOnly; SameSite=Strict; Max-Age=\(sessions.lifetime)\(secure)"))
        headers.append(HTTPField(name: .setCookie, value: "\(Self.csrfCookie)=; Path=/dashboard; HttpOnly; SameSite=Strict; Max-Age=0\(secure)"))
        return EdgeResponse(status: .seeOther, headers: headers)
    }

    func logout(_ request: EdgeRequest, now: Int64) -> EdgeResponse {
        guard sameOrigin(request), let token = Self.cookie(request, Self.sessionCookie), let session = sessions.session(token, now: now),
              let csrf = Self.form(request.body)["csrf"], Self.constantTimeEqual(csrf, session.csrf)
        else {
            return page("<!doctype html><title>Refused</title><p>Refused: log out from the dashboard's own button.</p>",
                        type: "text/html; charset=utf-8", status: .forbidden)
        }
        sessions.close(token)
        var headers = HTTPFields()
        headers[.location] = "/dashboard"
        headers.append(HTTPField(name: .setCookie, value: "\(Self.sessionCookie)=; Path=/dashboard; HttpOnly; SameSite=Strict; Max-Age=0"))
        return EdgeResponse(status: .seeOther, headers: headers)
    }

    // MARK: Data

    /// Everything the page draws, for the last `minutes` (default 60, at most a week).
    func data(_ request: EdgeRequest, now: Int64) async -> EdgeResponse {
        var minutes: Int64 = 60
        if let text = CacheAdminHandler.query(request.head.uri, "minutes") {
            guard let value = Int64(text), (1...10080).contains(value) else {
                return ErrorRenderer.response(for: GatewayError(.invalidRequest, "minutes must be 1 to 10080", param: "minutes"),
                                              format: .openAI, requestID: ChatHandler.makeRequestID())
            }
            minutes = value
        }
        let from = (now / 60 - minutes + 1) * 60
        let keys: [UsageKey: UsageTotals]
        do {
            keys = try await usage.usage(from: from, to: now, tenant: nil)
        } catch {
            return ErrorRenderer.response(for: GatewayError(.overloaded, "the usage store is unavailable: \(error)"), format: .openAI,
                                          requestID: ChatHandler.makeRequestID())
        }
        // One point per minute up to three hours, per hour beyond.
        let step: Int64 = minutes <= 180 ? 60 : 3600
        var points: [Int64: UsageTotals] = [:]
        var total = UsageTotals()
        var by: [String: [String: UsageTotals]] = ["tenant": [:], "user": [:], "feature": [:], "model": [:]]
        // Per dimension and value, spend per point: the lines of "spend over time by …".
        var pointsBy: [String: [String: [Int64: Int64]]] = [:]
        for (key, totals) in keys {
            let start = key.minute * 60 / step * step
            for (dimension, value) in [("tenant", key.tenant), ("user", key.user), ("feature", key.feature), ("model", key.model)] {
                pointsBy[dimension, default: [:]][value, default: [:]][start, default: 0] += totals[.cost]
            }
            points[key.minute * 60 / step * step, default: UsageTotals()].add(totals)
            total.add(totals)
            by["tenant", default: [:]][key.tenant, default: UsageTotals()].add(totals)
            by["user", default: [:]][key.user, default: UsageTotals()].add(totals)
            by["feature", default: [:]][key.feature, default: UsageTotals()].add(totals)
            by["model", default: [:]][key.model, default: UsageTotals()].add(totals)
        }
        let first: Int64 = from / step * step, last: Int64 = now / step * step
        let series: [JSONValue] = stride(from: first, through: last, by: Int(step)).map { (start: Int64) -> JSONValue in
            let point = points[start] ?? UsageTotals()
            return ["t": .int(start), "cost": .int(point[.cost]), "saved": .int(point.saved), "requests": .int(point[.requests]),
                    "hits": .int(point[.exactHits] + point[.semanticHits]), "errors": .int(point[.errors])]
        }
        let starts = Array(stride(from: first, through: last, by: Int(step)))
        /// The five costliest values of `dimension`, each with its spend per point.
        func lines(_ dimension: String) -> JSONValue {
            let rows = (by[dimension] ?? [:]).sorted { a, b in a.value[.cost] != b.value[.cost] ? a.value[.cost] > b.value[.cost] : a.key < b.key }
            return .array(rows.prefix(5).map { row in
                let spend = pointsBy[dimension]?[row.key] ?? [:]
                return ["name": .string(row.key), "cost": .array(starts.map { .int(spend[$0] ?? 0) })]
            })
        }
        func top(_ dimension: String) -> JSONValue {
            let rows = (by[dimension] ?? [:]).sorted { a, b in a.value[.cost] != b.value[.cost] ? a.value[.cost] > b.value[.cost] : a.key < b.key }
            return .array(rows.prefix(8).map { ["name": .string($0.key), "cost": .int($0.value[.cost]), "saved": .int($0.value.saved),
                                                 "requests": .int($0.value[.requests])] })
        }
        var savings: [String: JSONValue] = [:]
        for kind in SavingKind.allCases { savings[kind.rawValue] = .int(total[.saved(kind)]) }
        let queueDepths = queues().mapValues { depths in JSONValue.array(Priority.allCases.map { .int(Int64(depths[$0] ?? 0)) }) }
        let deployments: [JSONValue] = breakers().sorted { $0.key < $1.key }.map { ["id": .string($0.key), "state": .string($0.value)] }
        let body: JSONValue = [
            "now": .int(now), "from": .int(from), "minutes": .int(minutes), "step_seconds": .int(step),
            "totals": UsageHandler.figures(total), "saved_nano_usd": .int(total.saved), "escalations": .int(total[.escalations]),
            "series": .array(series), "by": ["tenant": top("tenant"), "user": top("user"), "feature": top("feature"), "model": top("model")],
            "series_by": ["tenant": lines("tenant"), "user": lines("user"), "feature": lines("feature"), "model": lines("model")],
            "savings": .object(savings), "live": live?.snapshot(now: now, window: min(minutes, 15)) ?? .null,
            "queues": .object(queueDepths), "deployments": .array(deployments),
        ]
        var headers = HTTPFields()
        headers[.contentType] = "application/json"
        headers[.cacheControl] = "no-store"
        return EdgeResponse(status: .ok, headers: headers, body: .buffer(ByteBuffer(bytes: body.serialized())))
    }

    // MARK: Helpers

    /// Behind TLS (the client's scheme, as a proxy in front tells it): the cookies are `Secure`.
    static func secure(_ request: EdgeRequest) -> Bool {
        request.header("x-forwarded-proto")?.lowercased() == "https"
    }

    /// A state-changing request from another site is refused: its `Origin` (sent by browsers on every POST) must name
    /// this host. Without one (not a browser), the CSRF token alone decides.
    /// Behind a proxy that rewrites `Host`, the host the browser saw is in `X-Forwarded-Host` (a cross-site form
    /// cannot set that header, so accepting it opens nothing).
    func sameOrigin(_ request: EdgeRequest) -> Bool {
        guard let origin = request.header("origin") else { return true }
        let hosts = [request.header("host"), request.header("x-forwarded-host")].compactMap { $0 }
        return hosts.contains { host in origin == "http://\(host)" || origin == "https://\(host)" }
    }

    static func cookie(_ request: EdgeRequest, _ name: String) -> String? {
        guard let header = request.header("cookie") else { return nil }
        for part in header.split(separator: ";") {
            let pair = part.split(separator: "=", maxSplits: 1)
            guard pair.count == 2, pair[0].trimmingWhitespaceSubstring() == name else { continue }
            return String(pair[1].trimmingWhitespaceSubstring())
        }
        return nil
    }

    /// An `application/x-www-form-urlencoded` body (at most 4 KiB read, 16 fields).
    static func form(_ body: ByteBuffer) -> [String: String] {
        guard body.readableBytes <= 4096 else { return [:] }
        var fields: [String: String] = [:]
        for pair in String(buffer: body).split(separator: "&").prefix(16) {
            let parts = pair.split(separator: "=", maxSplits: 1)
            guard let name = parts.first else { continue }
            fields[CacheAdminHandler.decode(String(name))] = CacheAdminHandler.decode(parts.count > 1 ? String(parts[1]) : "")
        }
        return fields
    }

    static func constantTimeEqual(_ a: String, _ b: String) -> Bool {
        let x = Array(a.utf8), y = Array(b.utf8)
        guard x.count == y.count else { return false }
        var difference: UInt8 = 0
        for index in x.indices { difference |= x[index] ^ y[index] }
        return difference == 0
    }

    static func escape(_ text: String) -> String {
        var out = ""
        for character in text {
            switch character {
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "&": out += "&amp;"
            case "\"": out += "&quot;"
            case "'": out += "&#39;"
            default: out.append(character)
            }
        }
        return out
    }
}

extension Substring {
    func trimmingWhitespaceSubstring() -> Substring {
        var text = self
        while text.first == " " || text.first == "\t" { text = text.dropFirst() }
        while text.last == " " || text.last == "\t" { text = text.dropLast() }
        return text
    }
}
