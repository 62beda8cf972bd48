//! A scripted browser for the OAuth pages: follows nothing by itself, keeps cookies, reads
//! forms out of the HTML it is served, and submits them as a browser would.
#![allow(dead_code)]

use std::collections::HashMap;

use base64::Engine;

/// A loaded page or redirect.
pub struct Page {
    pub status: u16,
    pub location: Option<String>,
    pub body: String,
    pub headers: reqwest::header::HeaderMap,
}

impl Page {
    /// `value` of the input named `name` (first one).
    pub fn input(&self, name: &str) -> Option<String> {
        inputs(&self.body)
            .into_iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, v, _)| v)
    }

    /// (value, checked) of every input named `name`.
    pub fn inputs(&self, name: &str) -> Vec<(String, bool)> {
        inputs(&self.body)
            .into_iter()
            .filter(|(n, _, _)| n == name)
            .map(|(_, v, c)| (v, c))
            .collect()
    }

    /// The `action` of the first form.
    pub fn form_action(&self) -> Option<String> {
        let re = regex::Regex::new(r#"<form[^>]*action="([^"]*)""#).ok()?;
        re.captures(&self.body).map(|c| unescape(&c[1]))
    }

    /// The query parameters of the redirect target.
    pub fn redirect_params(&self) -> HashMap<String, String> {
        let loc = self.location.clone().unwrap_or_default();
        let q = loc.split_once('?').map(|(_, q)| q).unwrap_or("");
        form_urlencoded::parse(q.as_bytes()).into_owned().collect()
    }
}

/// The text of HTML-escaped `s` (what minijinja's auto-escaping wrote).
pub fn unescape(s: &str) -> String {
    s.replace("&amp;", "&")
        .replace("&quot;", "\"")
        .replace("&#x27;", "'")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&#x2f;", "/")
}

/// (name, value, checked) of every `<input>`.
fn inputs(html: &str) -> Vec<(String, String, bool)> {
    let tag = regex::Regex::new(r"<input[^>]*>").unwrap();
    let attr = |t: &str, a: &str| {
        regex::Regex::new(&format!(r#"\s{a}="([^"]*)""#))
            .unwrap()
            .captures(t)
            .map(|c| unescape(&c[1]))
    };
    tag.find_iter(html)
        .filter_map(|m| {
            let t = m.as_str();
            Some((
                attr(t, "name")?,
                attr(t, "value").unwrap_or_default(),
                t.contains(" checked"),
            ))
        })
        .collect()
}

pub struct Browser {
    pub base: String,
    client: reqwest::Client,
    cookies: HashMap<String, String>,
}

impl Browser {
    pub fn new(base: &str) -> Browser {
        Browser {
            base: base.to_string(),
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            cookies: HashMap::new(),
        }
    }

    fn absolute(&self, url: &str) -> String {
        if url.starts_with("http://") || url.starts_with("https://") {
            url.to_string()
        } else {
            let origin: String = {
                let u = url::Url::parse(&self.base).unwrap();
                u.origin().ascii_serialization()
            };
            format!("{origin}{url}")
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn finish(&mut self, resp: reqwest::Response) -> Page {
        for sc in resp.headers().get_all(reqwest::header::SET_COOKIE) {
            let s = sc.to_str().unwrap();
            let (kv, rest) = s.split_once(';').unwrap_or((s, ""));
            let (k, v) = kv.split_once('=').unwrap();
            if rest.contains("Max-Age=0") {
                self.cookies.remove(k);
            } else {
                self.cookies.insert(k.to_string(), v.to_string());
            }
        }
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let location = headers
            .get(reqwest::header::LOCATION)
            .map(|v| v.to_str().unwrap().to_string());
        Page {
            status,
            location,
            body: resp.text().await.unwrap(),
            headers,
        }
    }

    pub async fn get(&mut self, url: &str) -> Page {
        let resp = self
            .client
            .get(self.absolute(url))
            .header(reqwest::header::COOKIE, self.cookie_header())
            .send()
            .await
            .unwrap();
        self.finish(resp).await
    }

    pub async fn post(&mut self, url: &str, form: &[(&str, &str)]) -> Page {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let resp = self
            .client
            .post(self.absolute(url))
            .header(reqwest::header::COOKIE, self.cookie_header())
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(body)
            .send()
            .await
            .unwrap();
        self.finish(resp).await
    }

    pub fn forget_cookie(&mut self, name: &str) {
        self.cookies.remove(name);
    }

    /// Follow redirects that stay on our server; stop at a page, or at a redirect elsewhere
    /// (the app's redirect_uri).
    pub async fn follow(&mut self, mut page: Page) -> Page {
        for _ in 0..10 {
            match &page.location {
                Some(loc) if page.status == 302 && self.is_ours(loc) => {
                    let loc = loc.clone();
                    page = self.get(&loc).await;
                }
                _ => return page,
            }
        }
        panic!("redirect loop");
    }

    /// GET and follow our own redirects.
    pub async fn open(&mut self, url: &str) -> Page {
        let p = self.get(url).await;
        self.follow(p).await
    }

    /// Log in on `page` and follow our own redirects.
    pub async fn login_follow(&mut self, page: &Page, user: &str, password: &str) -> Page {
        let p = self.login(page, user, password).await;
        self.follow(p).await
    }

    fn is_ours(&self, loc: &str) -> bool {
        loc.starts_with('/') || loc.starts_with(&self.base)
    }

    /// Submit the login form on `page`.
    pub async fn login(&mut self, page: &Page, user: &str, password: &str) -> Page {
        let action = page.form_action().expect("login form");
        let csrf = page.input("csrf").expect("csrf input");
        let req = page.input("req").unwrap_or_default();
        let next = page.input("next").unwrap_or_default();
        self.post(
            &action,
            &[
                ("csrf", &csrf),
                ("req", &req),
                ("next", &next),
                ("username", user),
                ("password", password),
            ],
        )
        .await
    }

    /// Submit the consent form on `page` with exactly `scopes` ticked (None: as offered).
    pub async fn consent(
        &mut self,
        page: &Page,
        decision: &str,
        scopes: Option<&[&str]>,
        remember: bool,
    ) -> Page {
        let action = page.form_action().expect("consent form");
        let csrf = page.input("csrf").expect("csrf");
        let req = page.input("req").expect("req");
        let ticked: Vec<String> = match scopes {
            Some(s) => s.iter().map(|s| s.to_string()).collect(),
            None => page
                .inputs("scope")
                .into_iter()
                .filter(|(_, c)| *c)
                .map(|(v, _)| v)
                .collect(),
        };
        let mut form: Vec<(&str, &str)> =
            vec![("csrf", &csrf), ("req", &req), ("decision", decision)];
        for s in &ticked {
            form.push(("scope", s));
        }
        if remember {
            form.push(("remember", "yes"));
        }
        self.post(&action, &form).await
    }
}

/// A PKCE verifier and its S256 challenge.
pub fn pkce() -> (String, String) {
    let verifier = format!(
        "{}{}",
        fhirgate_auth::tokens::random_id().unwrap(),
        fhirgate_auth::tokens::random_id().unwrap()
    );
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes());
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest);
    (verifier, challenge)
}
