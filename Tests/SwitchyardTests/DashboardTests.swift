import Foundation
import Server
import SwitchyardCore
import SwitchyardModels
import SwitchyardTestKit
import Testing

/// The dashboard's doors, over HTTP (the browser test, `scripts/dashboard-test.sh`, checks the page itself).
@Suite struct DashboardTests {
    static let form = "application/x-www-form-urlencoded"

    /// The login form's CSRF token and its cookie.
    static func loginForm(_ url: String) async throws -> (token: String, cookie: String) {
        let page = try await send("\(url)/dashboard", method: "GET", contentType: nil)
        #expect(page.status == 200 && page.body.contains("name=\"csrf\""))
        #expect(page.header("content-security-policy")?.contains("frame-ancestors 'none'") == true && page.header("x-frame-options") == "DENY")
        let cookie = try #require(page.header("set-cookie"))
        #expect(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict") && !cookie.contains("Secure"))
        let token = try #require(cookie.split(separator: ";").first?.split(separator: "=").last.map(String.init))
        return (token, "sy_csrf=\(token)")
    }

    @Test func onlyTheAdminKeyOpensASessionAndFailuresAreLimited() async throws {
        try await withTestGateway(environment: ["SWITCHYARD_ADMIN_KEY": "the-admin"]) { _, url in
            #expect(try await send("\(url)/dashboard/data", method: "GET", headers: [("authorization", "Bearer the-admin")], contentType: nil).status == 401)
            #expect(try await send("\(url)/dashboard/app.js", method: "GET", contentType: nil).status == 401)
            let (token, cookie) = try await Self.loginForm(url)
            let tenant = try await send("\(url)/dashboard/login", body: "key=tenant-key&csrf=\(token)", headers: [("cookie", cookie)], contentType: Self.form)
            #expect(tenant.status == 401 && tenant.body.contains("not the admin key") && tenant.header("set-cookie")?.contains("sy_session=") != true)
            // Behind TLS (as the proxy says), the session cookie is Secure.
            let admin = try await send("\(url)/dashboard/login", body: "key=the-admin&csrf=\(token)",
                                       headers: [("cookie", cookie), ("x-forwarded-proto", "https")], contentType: Self.form,
                                       followRedirects: false)
            #expect(admin.status == 303 && admin.header("location") == "/dashboard")
            let session = try #require(admin.headers.first { $0.0.lowercased() == "set-cookie" && $0.1.hasPrefix("sy_session=") }?.1)
            #expect(session.contains("Secure") && session.contains("HttpOnly") && session.contains("SameSite=Strict"))
            let value = try #require(session.split(separator: ";").first.map(String.init))
            let data = try await send("\(url)/dashboard/data?minutes=30", method: "GET", headers: [("cookie", value)], contentType: nil)
            #expect(data.status == 200 && data.header("cache-control") == "no-store")
            let json = try JSONValue.parse(Array(data.body.utf8))
            #expect(json["series"]?.arrayValue?.count == 30 && json["totals"]?["requests"] != nil)
            #expect(try await send("\(url)/dashboard/data?minutes=0", method: "GET", headers: [("cookie", value)], contentType: nil).status == 400)
            // A post from another site is refused; behind a proxy, the host the browser saw may come as X-Forwarded-Host.
            let crossSite = try await send("\(url)/dashboard/login", body: "key=the-admin&csrf=\(token)",
                                           headers: [("cookie", cookie), ("origin", "https://evil.example")], contentType: Self.form)
            #expect(crossSite.status == 403)
            let proxied = try await send("\(url)/dashboard/login", body: "key=the-admin&csrf=\(token)",
                                         headers: [("cookie", cookie), ("origin", "https://gateway.example"),
                                                   ("x-forwarded-host", "gateway.example")], contentType: Self.form, followRedirects: false)
            #expect(proxied.status == 303)
            // Logging out needs the session's own token.
            let forged = try await send("\(url)/dashboard/logout", body: "csrf=\(token)", headers: [("cookie", value)], contentType: Self.form,
                                        followRedirects: false)
            #expect(forged.status == 403)
            // A form over 4 KiB is not read (its token is missing), and a cookie that is not a session opens nothing.
            let huge = try await send("\(url)/dashboard/login", body: "key=the-admin&csrf=\(token)&pad=" + String(repeating: "x", count: 5000),
                                      headers: [("cookie", cookie)], contentType: Self.form)
            #expect(huge.status == 403)
            #expect(try await send("\(url)/dashboard/data", method: "GET", headers: [("cookie", "sy_session=" + String(repeating: "a", count: 64))],
                                   contentType: nil).status == 401)
            // Twenty wrong keys in a minute: then even the right one waits.
            for _ in 0..<20 {
                _ = try await send("\(url)/dashboard/login", body: "key=guess&csrf=\(token)", headers: [("cookie", cookie)], contentType: Self.form)
            }
            let locked = try await send("\(url)/dashboard/login", body: "key=the-admin&csrf=\(token)", headers: [("cookie", cookie)], contentType: Self.form)
            #expect(locked.status == 429)
        }
    }

    @Test func withoutAnAdminKeyNobodyLogsIn() async throws {
        try await withTestGateway { _, url in
            let (token, cookie) = try await Self.loginForm(url)
            let response = try await send("\(url)/dashboard/login", body: "key=anything&csrf=\(token)", headers: [("cookie", cookie)], contentType: Self.form)
            #expect(response.status == 403 && response.body.contains("SWITCHYARD_ADMIN_KEY"))
        }
    }
}
