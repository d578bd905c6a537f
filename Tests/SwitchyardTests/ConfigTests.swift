import Foundation
import Logging
import SwitchyardCore
import SwitchyardModels
import Testing

@Suite struct ConfigTests {
    let env = ["ANTHROPIC_API_KEY": "sk-ant-test", "OPENAI_API_KEY": "sk-test"]

    static let valid = """
        listen: {host: 0.0.0.0, port: 9000}
        max_body_bytes: 1048576
        drain_timeout_seconds: 5
        providers:
          anthropic:
            kind: anthropic
            api_key_env: ANTHROPIC_API_KEY
            timeouts: {connect_seconds: 2, total_seconds: 120, first_token_seconds: 30}
            pool_size: 32
          local:
            kind: openai-compatible
            base_url: http://10.0.0.5:8000/v1/
            keep_alive: false
        models:
          claude-haiku-4-5:
            provider: anthropic
          llama:
            provider: local
            upstream_model: meta-llama/Llama-3.1-8B-Instruct
            price: {input: 0.05, output: "0.10"}
        keys:
          - sha256: \(String(repeating: "ab", count: 32))
            tenant: acme
            user: alice
            tier: pro
            feature: chat
        """

    @Test func loadsAValidFile() throws {
        let config = try ConfigLoader.parse(yaml: Self.valid, environment: env)
        #expect(config.host == "0.0.0.0")
        #expect(config.port == 9000)
        #expect(config.maxBodyBytes == 1_048_576)
        #expect(config.drainTimeout == .seconds(5))
        #expect(config.providers["anthropic"]?.baseURL == "https://api.anthropic.com")
        #expect(config.providers["anthropic"]?.timeouts == ProviderTimeouts(connect: .seconds(2), total: .seconds(120), firstToken: .seconds(30)))
        #expect(config.providers["local"]?.baseURL == "http://10.0.0.5:8000")
        #expect(config.providers["local"]?.keepAlive == false && config.providers["anthropic"]?.keepAlive == true)
        #expect(config.models["claude-haiku-4-5"]?.price == DefaultCatalog.models[0].price)  // list price from the catalog
        #expect(config.models["llama"]?.price == ModelPrice(usd: "0.05", "0.10", "0", "0"))
        #expect(config.keys.first?.caller == Caller(tenant: "acme", user: "alice", tier: "pro", feature: "chat", keyID: "abababababab"))
    }

    func error(_ yaml: String) -> ConfigError? {
        do {
            _ = try ConfigLoader.parse(yaml: yaml, environment: env)
            return nil
        } catch {
            return error
        }
    }

    @Test(arguments: [
        ("listen: {hots: x}\nproviders: {m: {kind: mock}}\nmodels: {gpt-4o: {provider: m}}", "listen.hots", "unknown key"),
        ("providers: {m: {kind: mock, colour: red}}\nmodels: {gpt-4o: {provider: m}}", "providers.m.colour", "unknown key"),
        ("providers: {m: {kind: magic}}\nmodels: {gpt-4o: {provider: m}}", "providers.m.kind", "must be one of"),
        ("providers: {a: {kind: anthropic, api_key: sk-live}}\nmodels: {x: {provider: a}}", "providers.a.api_key", "never written"),
        ("providers: {a: {kind: anthropic, api_key_env: NOPE}}\nmodels: {x: {provider: a}}", "providers.a.api_key_env", "not set"),
        ("providers: {m: {kind: mock}}\nmodels: {x: {provider: nowhere}}", "models.x.provider", "unknown provider"),
        ("providers: {m: {kind: mock}}\nmodels: {x: {provider: m}}", "models.x.price", "is required"),
        ("providers: {m: {kind: mock}}\nmodels: {x: {provider: m, price: {input: -1, output: 1}}}", "models.x.price.input", "non-negative"),
        ("providers: {m: {kind: mock}}\nmodels: {gpt-4o: {provider: m}}\nkeys: [{sha256: sk-raw-key, tenant: t}]", "keys[0].sha256", "64 hex"),
        ("providers: {m: {kind: mock}}\nmodels: {gpt-4o: {provider: m}}\nmax_body_bytes: 5", "max_body_bytes", "between"),
        ("providers: {o: {kind: openai-compatible}}\nmodels: {gpt-4o: {provider: o}}", "providers.o.base_url", "is required"),
        ("providers: {m: {kind: mock}}", "models", "is required"),
        ("providers: {o: {kind: openai-compatible, base_url: 'http://host:port'}}\nmodels: {gpt-4o: {provider: o}}",
         "providers.o.base_url", "not a valid URL"),
        ("providers: {m: {kind: mock}}\nmodels: {gpt-4o: {provider: m}}\nmock: {fault_rates: {'999': 0.1}}", "mock.fault_rates.999",
         "unknown fault"),
        ("providers: {m: {kind: mock}}\nmodels: {gpt-4o: {provider: m}}\nmock: {fault_rates: {'429': 0.7, '500': 0.5}}",
         "mock.fault_rates", "more than 1"),
        ("providers: {m: {kind: mock}}\nmodels: {gpt-4o: {provider: m}}\nmock: {length_trace: /no/such/file}", "mock.length_trace",
         "cannot read"),
        ("providers: {m: {kind: mock}}\nmodels: {gpt-4o: {provider: m}}\nmock: {rpm: 5}", "mock.rpm", "unknown key"),
        ("providers: {m: {kind: mock}}\nmodels: {gpt-4o: {provider: m}}\nmock: {schedule: [{from: 5, to: 2, fault_rates: {'503': 1}}]}",
         "mock.schedule[0].to", "after from"),
        ("providers: {m: {kind: mock}}\nmodels: {gpt-4o: {provider: m}}\nmock: {schedule: [{from: 1, to: 2, fault_rates: {'418': 1}}]}",
         "mock.schedule[0].fault_rates.418", "unknown fault"),
        ("providers: {m: {kind: mock}}\nmodels: {gpt-4o: {provider: m}}\nmock: {schedule: [{to: 2}]}", "mock.schedule[0].fault_rates",
         "is required"),
        ("providers: {v: {kind: openai-compatible, replicas: ['http://127.0.0.1:1', 'http://127.0.0.1:2'], balancing_choices: 0}}\nmodels: {m: {provider: v}}",
         "providers.v.balancing_choices", "between"),
        ("providers: {m: {kind: mock}}\nmodels: {gpt-4o: {provider: m}}\ncache: {semantic: {threshold: 1.5}}",
         "cache.semantic.threshold", "between"),
        ("providers: {m: {kind: mock}}\nmodels: {gpt-4o: {provider: m}}\ncache: {exact: {enabled: maybe}}", "cache.exact.enabled",
         "true or false"),
        ("providers: {m: {kind: mock}}\nmodels: {gpt-4o: {provider: m, cache_ttl: 5}}", "models.gpt-4o.cache_ttl", "unknown key"),
        ("providers: {o: {kind: openai-compatible, base_url: 'http://h:1', tls_ca_file: /etc/hostname}}\nmodels: {x: {provider: o, price: {input: 1, output: 1}}}",
         "providers.o.tls_ca_file", "only to an https"),
        ("providers: {o: {kind: openai-compatible, base_url: 'https://h:1', tls_ca_file: /etc/hostname}}\nmodels: {x: {provider: o, price: {input: 1, output: 1}}}",
         "providers.o.tls_ca_file", "not a readable PEM"),
        ("providers: {m: {kind: mock}}\nmodels: {gpt-4o: {provider: m}}\ncache: {semantic: {verifier: neural}}",
         "cache.semantic.verifier", "'rules', 'learned' or 'rules_or_learned'"),
        ("providers: {m: {kind: mock}}\nmodels: {gpt-4o: {provider: m}}\ncache: {semantic: {verifier_file: /nonexistent/v.json}}",
         "cache.semantic.verifier_file", "cannot read"),
        ("providers: {m: {kind: mock}}\nmodels: {gpt-4o: {provider: m}}\ncache: {semantic: {target_precision: 1.5}}",
         "cache.semantic.target_precision", "between"),
        ("providers: {m: {kind: mock}}\nmodels: {gpt-4o: {provider: m}}\ncache: {semantic: {target_precision: .nan}}",
         "cache.semantic.target_precision", "between"),
        ("providers: {m: {kind: mock}}\nmodels: {gpt-4o: {provider: m}}\ncache: {semantic: {agreement_cosine: 0.2}}",
         "cache.semantic.agreement_cosine", "between"),
        ("providers: {m: {kind: mock}}\nmodels: {gpt-4o: {provider: m}}\ncache: {semantic: {agreement_probability: -1}}",
         "cache.semantic.agreement_probability", "between"),
        ("providers: {m: {kind: mock}}\nmodels: {gpt-4o: {provider: m}}\nadmission: {p2_share: 2}", "admission.p2_share", "between"),
        ("providers: {m: {kind: mock}}\nmodels: {gpt-4o: {provider: m}}\nadmission: {deadlines: {p3_seconds: 1}}", "admission.deadlines.p3_seconds",
         "unknown key"),
        ("providers: {m: {kind: mock}}\nmodels: {gpt-4o: {provider: m}}\nadmission: {deadlines: {p0_seconds: 0}}", "admission.deadlines.p0_seconds",
         "between"),
        ("providers: {m: {kind: mock}}\nmodels: {gpt-4o: {provider: m}}\nadmission: {tenant_weights: {acme: 1000}}", "admission.tenant_weights.acme",
         "between"),
        ("providers: {m: {kind: mock}}\nmodels: {gpt-4o: {provider: m}}\njobs: {workers: -1}", "jobs.workers", "between"),
        ("providers: {m: {kind: mock}}\nmodels: {gpt-4o: {provider: m}}\njobs: {deadlines: {p9_seconds: 1}}", "jobs.deadlines.p9_seconds",
         "unknown key"),
        ("providers: {m: {kind: mock}}\nmodels: {gpt-4o: {provider: m}}\njobs: {visibility_timeout_seconds: 0}", "jobs.visibility_timeout_seconds",
         "between"),
        ("providers: {m: {kind: mock}}\nmodels: {gpt-4o: {provider: m}}\njobs: {retain: 5}", "jobs.retain", "unknown key"),
        ("providers: {m: {kind: mock}}\nmodels: {gpt-4o: {provider: m, batch: sometimes}}", "models.gpt-4o.batch", "auto or never"),
        ("providers: {v: {kind: openai-compatible, base_url: 'http://127.0.0.1:1'}}\nmodels: {llama: {provider: v, batch: auto, price: {input: 0, output: 0}}}",
         "models.llama.batch", "no batch API"),
        ("providers: {m: {kind: mock}, v: {kind: openai-compatible, base_url: 'http://127.0.0.1:1'}}\nmodels: {gpt-4o: {provider: m, batch: auto, deployments: [{provider: v}]}}",
         "models.gpt-4o.deployments[0].provider", "no batch API"),
        ("providers: {v: {kind: openai-compatible, base_url: 'http://127.0.0.1:1'}}\nmodels: {llama: {provider: v, price: {input: 0, output: 0}}}\nroutes: {bg: {batch: auto, rules: [{model: llama}]}}",
         "routes.bg.batch", "without a batch API"),
        ("providers: {m: {kind: mock}}\nmodels: {gpt-4o: {provider: m}}\njobs: {batch: {max_requests: 0}}", "jobs.batch.max_requests", "between"),
        ("providers: {m: {kind: mock}}\nmodels: {gpt-4o: {provider: m}}\njobs: {batch: {min_time_left_seconds: 60, live_margin_seconds: 60}}",
         "jobs.batch.min_time_left_seconds", "more than live_margin_seconds"),
        ("providers: {m: {kind: mock}}\nmodels: {gpt-4o: {provider: m}}\njobs: {batch: {size: 5}}", "jobs.batch.size", "unknown key"),
        ("providers: {m: {kind: mock}}\nmodels: {gpt-4o: {provider: m}}\nadmission: {shared: maybe}", "admission.shared", "true or false"),
        ("providers: {m: {kind: mock}}\nmodels: {gpt-4o: {provider: m}}\nkeys: [{sha256: \(String(repeating: "ab", count: 32)), tenant: t, priority: urgent}]",
         "keys[0].priority", "p0, p1 or p2"),
    ])
    func badFilesNameTheKeyPath(_ testCase: (String, String, String)) {
        let error = error(testCase.0)
        #expect(error?.path == testCase.1)
        #expect(error?.message.contains(testCase.2) == true, "\(String(describing: error))")
    }

    @Test func theLearnedVerifierIsChosenByConfig() throws {
        let config = try ConfigLoader.parse(yaml: """
            providers: {m: {kind: mock}}
            models: {gpt-4o: {provider: m}}
            cache: {semantic: {verifier: learned, calibrate: false, target_precision: 0.995}}
            """, environment: env)
        #expect(config.cache.semanticLearnedVerifier && !config.cache.semanticCalibrate && !config.cache.semanticLearnedExtendsRules)
        let extending = try ConfigLoader.parse(yaml: "providers: {m: {kind: mock}}\nmodels: {gpt-4o: {provider: m}}\n"
                                                   + "cache: {semantic: {verifier: rules_or_learned}}", environment: env)
        #expect(extending.cache.semanticLearnedVerifier && extending.cache.semanticLearnedExtendsRules)
        #expect(extending.cache.semanticAgreementCosine == 0.90 && extending.cache.semanticAgreementProbability == 0.5)
        let band = try ConfigLoader.parse(yaml: "providers: {m: {kind: mock}}\nmodels: {gpt-4o: {provider: m}}\n"
                                              + "cache: {semantic: {verifier: rules_or_learned, agreement_cosine: 1, agreement_probability: 0.8}}",
                                          environment: env)
        #expect(band.cache.semanticAgreementCosine == 1 && band.cache.semanticAgreementProbability == 0.8)
        #expect(throws: ConfigError.self) {
            try ConfigLoader.parse(yaml: "providers: {m: {kind: mock}}\nmodels: {gpt-4o: {provider: m}}\ncache: {semantic: {verifier: both}}",
                                   environment: env)
        }
        #expect(config.cache.semanticTargetPrecision == 0.995 && config.cache.semanticVerifierFile == nil)
        #expect(try !ConfigLoader.parse(yaml: "providers: {m: {kind: mock}}\nmodels: {gpt-4o: {provider: m}}", environment: env).cache.semanticLearnedVerifier)
    }

    @Test func theStateSectionIsReadAndCredentialsComeFromTheEnvironment() throws {
        let config = try ConfigLoader.parse(yaml: """
            providers: {m: {kind: mock}}
            models: {gpt-4o: {provider: m}}
            state: {backend: redis, url: "redis://10.0.0.7:6380/3", key_prefix: "prod:", password_env: REDIS_PASSWORD,
                    caches: fail_closed, command_timeout_seconds: 0.25, pool_size: 8}
            """, environment: env.merging(["REDIS_PASSWORD": "pw"]) { $1 })
        #expect(config.state.backend == .redis && config.state.host == "10.0.0.7" && config.state.port == 6380)
        #expect(config.state.database == 3 && config.state.keyPrefix == "prod:" && config.state.password == "pw")
        #expect(config.state.caches == .failClosed && config.state.commandTimeout == .milliseconds(250) && config.state.poolSize == 8)
        #expect(try ConfigLoader.parse(yaml: "providers: {m: {kind: mock}}\nmodels: {gpt-4o: {provider: m}}", environment: env)
            .state.backend == .memory)
        #expect(!config.state.tls)
        let tls = try ConfigLoader.parse(yaml: """
            providers: {m: {kind: mock}}
            models: {gpt-4o: {provider: m}}
            state: {backend: redis, url: "rediss://cache.internal:6380", tls_ca_file: \(RedisServerProcess.tlsFixtures.appendingPathComponent("ca.pem").path)}
            """, environment: env).state
        #expect(tls.tls && tls.host == "cache.internal" && tls.port == 6380 && tls.tlsCAFile?.hasSuffix("ca.pem") == true)
        for (state, path, message) in [
            ("{backend: etcd}", "state.backend", "'memory' or 'redis'"),
            ("{url: \"redis://user:pw@host\"}", "state.url", "credentials"),
            ("{url: \"http://host\"}", "state.url", "rediss://"),
            ("{url: \"redis://host/2\", cluster: true}", "state.url", "only database 0"),
            ("{cluster: maybe}", "state.cluster", "true or false"),
            ("{url: \"redis://host\", tls_ca_file: /etc/hostname}", "state.tls_ca_file", "rediss://"),
            ("{url: \"rediss://host\", tls_ca_file: /no/such/file.pem}", "state.tls_ca_file", "cannot read"),
            ("{url: \"redis://host:99999\"}", "state.url", "port"),
            ("{url: \"redis://host/99\"}", "state.url", "database"),
            ("{password_env: NOT_SET}", "state.password_env", "not set"),
            ("{key_prefix: \"a b\"}", "state.key_prefix", "spaces"),
            ("{caches: maybe}", "state.caches", "fail_open"),
            ("{limits: sometimes}", "state.limits", "fail_open"),
            ("{pool_size: 0}", "state.pool_size", "between"),
        ] {
            let error = error("providers: {m: {kind: mock}}\nmodels: {gpt-4o: {provider: m}}\nstate: \(state)")
            #expect(error?.path == path, "\(state): \(String(describing: error))")
            #expect(error?.message.contains(message) == true, "\(state): \(String(describing: error))")
        }
    }

    @Test func limitsAndTierPresetsAreReadAndCheckedWithKeyPaths() throws {
        let base = "providers: {m: {kind: mock}}\nmodels: {gpt-4o: {provider: m}}\n"
        let config = try ConfigLoader.parse(yaml: base + """
            limits:
              - {name: paid-tokens, total_tokens: 200000, per: minute, scope: [tier, model], when: {tier: [paid, trial]}}
              - {name: inflight, concurrent: 10, scope: [tenant]}
              - {name: monthly-spend, spend_usd: "250.50", per: month, scope: [tenant], counts: all_requests}
              - {name: expensive, requests: 5, per: hour, scope: [feature, user], when: {feature: report, model: gpt-4o}}
            tiers:
              free: [{requests: 20, per: minute}]
              paid: [{requests: 100, per: minute}, {output_tokens: 50000, per: day}]
            """, environment: env)
        let byName = Dictionary(uniqueKeysWithValues: config.limits.map { ($0.name, $0) })
        #expect(config.limits.count == 7)
        #expect(byName["paid-tokens"] == LimitDefinition(name: "paid-tokens", measure: .totalTokens, amount: 200_000, window: .minute,
                                                         scope: [.model, .tier], when: [.tier: ["paid", "trial"]]))
        #expect(byName["inflight"]?.window == nil && byName["inflight"]?.amount == 10)
        #expect(byName["monthly-spend"]?.amount == 250_500_000_000 && byName["monthly-spend"]?.countsAllRequests == true)
        #expect(byName["expensive"]?.scope == [.user, .feature] && byName["expensive"]?.when[.model] == ["gpt-4o"])
        #expect(byName["tier-free-requests-minute"] == LimitDefinition(name: "tier-free-requests-minute", measure: .requests, amount: 20,
                                                                       window: .minute, scope: [.user], when: [.tier: ["free"]]))
        #expect(byName["tier-paid-output_tokens-day"]?.window == .day)
        #expect(try ConfigLoader.parse(yaml: base, environment: env).limits.isEmpty)
        for (limits, path, message) in [
            ("limits: [{requests: 5, per: minute}]", "limits[0].name", "required"),
            ("limits: [{name: \"a b\", requests: 5, per: minute}]", "limits[0].name", "letters"),
            ("limits: [{name: a, requests: 5, per: minute}, {name: a, requests: 6, per: hour}]", "limits[1].name", "duplicate"),
            ("limits: [{name: a, per: minute}]", "limits[0]", "must set one of"),
            ("limits: [{name: a, requests: 5, total_tokens: 9, per: minute}]", "limits[0].total_tokens", "one thing"),
            ("limits: [{name: a, requests: 0, per: minute}]", "limits[0].requests", "between"),
            ("limits: [{name: a, requests: -3, per: minute}]", "limits[0].requests", "between"),
            ("limits: [{name: a, requests: 99999999999999999999, per: minute}]", "limits[0].requests", "integer"),
            ("limits: [{name: a, requests: 5}]", "limits[0].per", "required"),
            ("limits: [{name: a, requests: 5, per: fortnight}]", "limits[0].per", "one of"),
            ("limits: [{name: a, concurrent: 5, per: minute}]", "limits[0].per", "no window"),
            ("limits: [{name: a, spend_usd: \"-1\", per: day}]", "limits[0].spend_usd", "above 0"),
            ("limits: [{name: a, spend_usd: \"0\", per: day}]", "limits[0].spend_usd", "above 0"),
            ("limits: [{name: a, requests: 5, per: day, scope: [galaxy]}]", "limits[0].scope[0]", "one of"),
            ("limits: [{name: a, requests: 5, per: day, scope: [user, user]}]", "limits[0].scope[1]", "twice"),
            ("limits: [{name: a, requests: 5, per: day, scope: []}]", "limits[0].scope", "at least one"),
            ("limits: [{name: a, requests: 5, per: day, when: {user: x}}]", "limits[0].when.user", "unknown key"),
            ("limits: [{name: a, requests: 5, per: day, when: {tier: []}}]", "limits[0].when.tier", "at least one"),
            ("limits: [{name: a, requests: 5, per: day, counts: some}]", "limits[0].counts", "all_requests"),
            ("limits: [{name: a, requests: 5, per: day, colour: red}]", "limits[0].colour", "unknown key"),
            ("tiers: {free: [{requests: 5}]}", "tiers.free[0].per", "required"),
            ("tiers: {free: [{requests: 5, per: minute}, {requests: 9, per: minute}]}", "tiers.free[1]", "second requests limit"),
            ("tiers: {free: [{requests: 5, per: minute, scope: [tenant]}]}", "tiers.free[0].scope", "unknown key"),
        ] {
            let error = error(base + limits)
            #expect(error?.path == path, "\(limits): \(String(describing: error))")
            #expect(error?.message.contains(message) == true, "\(limits): \(String(describing: error))")
        }
    }

    @Test func theAdmissionSectionAndKeyPrioritiesAreRead() throws {
        let yaml = Self.valid.replacingOccurrences(of: "feature: chat", with: "feature: chat\n    priority: p1") + """

            admission:
              capacity: 500
              p2_share: 0.1
              deadlines: {p0_seconds: 2.5, p2_seconds: 600}
              tenant_weights: {acme: 3}
            """
        let config = try ConfigLoader.parse(yaml: yaml, environment: env)
        #expect(config.keys.first?.caller.priority == .p1)
        #expect(config.admission.capacity == 500)
        #expect(config.admission.p2Share == 0.1)
        #expect(config.admission.deadline(.p0) == .milliseconds(2500))
        #expect(config.admission.deadline(.p1) == .seconds(30), "the default where not given")
        #expect(config.admission.deadline(.p2) == .seconds(600))
        #expect(config.admission.weight("acme") == 3 && config.admission.weight("other") == 1)
        // Without the section: the defaults, and keys at p0.
        let plain = try ConfigLoader.parse(yaml: Self.valid, environment: env)
        #expect(plain.admission == AdmissionSettings())
        #expect(plain.jobs == JobSettings())
        #expect(plain.keys.first?.caller.priority == .p0)
    }

    @Test func theJobsSectionIsRead() throws {
        let config = try ConfigLoader.parse(yaml: Self.valid + """

            jobs:
              workers: 3
              retention_seconds: 3600
              max_queued_per_tenant: 50
              visibility_timeout_seconds: 5
              deadlines: {p2_seconds: 7200}
              webhook_attempts: 2
            """, environment: env)
        #expect(config.jobs.workers == 3 && config.jobs.retention == .seconds(3600) && config.jobs.maxQueuedPerTenant == 50)
        #expect(config.jobs.visibilityTimeout == .seconds(5) && config.jobs.webhookAttempts == 2)
        #expect(config.jobs.deadline(.p2) == .seconds(7200) && config.jobs.deadline(.p0) == .seconds(60))
        #expect(config.jobs.batch == BatchSettings(), "the batch defaults where not given")
    }

    @Test func batchPoliciesAndTheirSettingsAreRead() throws {
        let config = try ConfigLoader.parse(yaml: """
            providers: {m: {kind: mock}}
            models:
              gpt-4o: {provider: m, batch: auto}
              gpt-4o-mini: {provider: m}
            routes:
              background: {batch: auto, rules: [{model: gpt-4o-mini}]}
            admission: {shared: false}
            jobs:
              batch: {window_seconds: 5, max_requests: 200, poll_seconds: 2, min_time_left_seconds: 1800, live_margin_seconds: 300, max_pending: 900}
            """, environment: env)
        #expect(config.models["gpt-4o"]?.batch == .auto && config.models["gpt-4o-mini"]?.batch == .never)
        #expect(config.routes["background"]?.batch == .auto)
        #expect(config.admission.shared == false)
        let batch = config.jobs.batch
        #expect(batch.window == .seconds(5) && batch.maxRequests == 200 && batch.pollInterval == .seconds(2))
        #expect(batch.minimumTimeLeft == .seconds(1800) && batch.liveMargin == .seconds(300) && batch.maxPending == 900)
    }

    @Test func aHeaderCanLowerTheKeysPriorityButNeverRaiseIt() {
        var context = GatewayContext(requestID: "r", logger: .init(label: "t"), clientFormat: .openAI)
        #expect(context.priority == .p0)
        context.caller = Caller(tenant: "t", user: "u", keyID: "k", priority: .p1)
        #expect(context.priority == .p1)
        context.requestedPriority = .p2
        #expect(context.priority == .p2)
        context.requestedPriority = .p0
        #expect(context.priority == .p1)
    }

    @Test func theMockSectionIsRead() throws {
        let config = try ConfigLoader.parse(yaml: """
            providers: {m: {kind: mock}}
            models: {gpt-4o: {provider: m}}
            mock: {requests_per_minute: 600, tokens_per_minute: 90000, seed: 7, fault_rates: {"429": 0.02, disconnect-mid-stream: 0.01}}
            """, environment: env)
        #expect(config.mock.requestsPerMinute == 600 && config.mock.tokensPerMinute == 90000 && config.mock.seed == 7)
        #expect(config.mock.faultRates == ["429": 0.02, "disconnect-mid-stream": 0.01])
    }

    @Test func theCacheSectionIsRead() throws {
        let config = try ConfigLoader.parse(yaml: """
            providers: {m: {kind: mock}}
            models:
              gpt-4o: {provider: m, cache_ttl_seconds: 60, semantic_cache: false, semantic_threshold: 0.98}
              gpt-4o-mini: {provider: m, exact_cache: false}
            cache:
              exact: {ttl_seconds: 120, max_entries: 50, max_bytes: 100000}
              semantic: {threshold: 0.97, verify: false, with_tools: true, max_entries: 20}
            """, environment: env)
        #expect(config.cache.exactEnabled && config.cache.semanticEnabled)
        #expect(config.cache.ttl(for: "gpt-4o") == .seconds(60) && config.cache.ttl(for: "gpt-4o-mini") == .seconds(120))
        #expect(config.cache.maxEntries == 50 && config.cache.maxBytes == 100_000 && config.cache.semanticMaxEntries == 20)
        #expect(config.cache.semanticThreshold == 0.97 && !config.cache.semanticVerify && config.cache.semanticWithTools)
        #expect(config.cache.semanticOff == ["gpt-4o"] && config.cache.exactOff == ["gpt-4o-mini"])
        #expect(config.cache.semanticThreshold(for: "gpt-4o") == 0.98 && config.cache.semanticThreshold(for: "gpt-4o-mini") == 0.97)
        // The defaults: both on, verified, at the evaluated threshold.
        let defaults = GatewayConfig.embeddedDefault().cache
        #expect(defaults.exactEnabled && defaults.semanticEnabled && defaults.semanticVerify && defaults.semanticThreshold == 0.94)
    }

    @Test func theShippedExampleIsValid() throws {
        let path = #filePath.replacingOccurrences(of: "Tests/SwitchyardTests/ConfigTests.swift", with: "switchyard.example.yaml")
        let config = try ConfigLoader.load(path: path, environment: env)
        #expect(!config.models.isEmpty)
    }
}
