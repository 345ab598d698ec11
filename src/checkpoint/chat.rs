//! Chat templates: the checkpoint's own Jinja template (GGUF
//! `tokenizer.chat_template` or tokenizer_config.json), rendered with
//! minijinja; when the checkpoint has none, Gemma's turns for Gemma and
//! ChatML (SmolLM2's format) for the others.

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn user(content: &str) -> Self {
        Self {
            role: "user".into(),
            content: content.into(),
        }
    }
}

/// Gemma's turns, for Gemma checkpoints that carry no template (base models:
/// the vocabulary has the turn markers).
pub const GEMMA_TURNS: &str = "{{ bos_token }}{% for message in messages %}{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else message['role']) + '\n' + message['content'] + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}";

/// ChatML, as SmolLM2 and Qwen2 use it.
pub const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Renders `messages` with `template` (or ChatML), ending with the assistant's turn.
pub fn render(
    template: Option<&str>,
    messages: &[Message],
    bos: &str,
    eos: &str,
) -> Result<String, String> {
    let mut env = minijinja::Environment::new();
    env.add_function(
        "raise_exception",
        |msg: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                msg,
            ))
        },
    );
    env.add_template("chat", template.unwrap_or(CHATML))
        .map_err(|e| format!("chat template: {e}"))?;
    let tmpl = env
        .get_template("chat")
        .map_err(|e| format!("chat template: {e}"))?;
    tmpl.render(minijinja::context! {
        messages => messages,
        add_generation_prompt => true,
        bos_token => bos,
        eos_token => eos,
    })
    .map_err(|e| format!("chat template: {e}"))
}

/// How a model wants its prompts: its chat template and the names of its
/// BOS and EOS tokens, which templates may print. Built once per model, so
/// every front end renders a chat prompt the same way.
#[derive(Debug, Clone)]
pub struct PromptFormat {
    template: Option<String>,
    bos: String,
    eos: String,
}

impl PromptFormat {
    pub fn new(ckpt: &super::Checkpoint, tok: &tokenizers::Tokenizer) -> Self {
        let cfg = ckpt.config();
        let name = |id: Option<u32>| id.and_then(|i| tok.id_to_token(i)).unwrap_or_default();
        let fallback = ckpt
            .config()
            .architecture
            .is_gemma()
            .then(|| GEMMA_TURNS.to_string());
        Self {
            template: ckpt.chat_template().or(fallback),
            bos: name(cfg.bos_token_id),
            eos: name(cfg.eos_token_ids.first().copied()),
        }
    }

    /// The text the model sees: `prompt` as it is, or as one user turn of the
    /// chat template (ending with the assistant's turn).
    pub fn text(&self, prompt: &str, chat: bool) -> Result<String, String> {
        if chat {
            render(
                self.template.as_deref(),
                &[Message::user(prompt)],
                &self.bos,
                &self.eos,
            )
        } else {
            Ok(prompt.to_string())
        }
    }

    /// Token ids of [`Self::text`]. A raw prompt gets what the tokenizer
    /// adds by default (BOS for Gemma, as transformers' `tok(prompt)`); a
    /// chat prompt only what its template writes.
    pub fn ids(
        &self,
        tok: &tokenizers::Tokenizer,
        prompt: &str,
        chat: bool,
    ) -> Result<Vec<u32>, String> {
        let text = self.text(prompt, chat)?;
        let enc = tok
            .encode(text.as_str(), !chat)
            .map_err(|e| format!("tokenizer: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemma_turns_render_a_user_turn() {
        let s = render(Some(GEMMA_TURNS), &[Message::user("Hi")], "<bos>", "<eos>").unwrap();
        assert_eq!(
            s,
            "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
        );
    }

    #[test]
    fn chatml_renders_a_user_turn() {
        let s = render(None, &[Message::user("Hi")], "", "").unwrap();
        assert_eq!(s, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    }
}
