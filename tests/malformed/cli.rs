//! Bad paths, texts and arguments on the command line.

use super::*;

/// The cases of this part of the corpus.
pub(super) fn cases() -> Vec<Case> {
    let mut v = vec![
        // ---- paths ----
        case("path_missing", &["nothing-here", "no such file"], |dir| {
            args(&["inspect", &s(&dir.join("nothing-here"))])
        }),
        case("path_empty_model_id", &["the model \"\" is empty"], |_| {
            args(&["inspect", ""])
        }),
        case(
            "path_fifo_as_gguf",
            &["m.gguf", "not a regular file (a FIFO)"],
            |dir| {
                let p = dir.join("m.gguf");
                mkfifo(&p);
                args(&["inspect", &s(&p)])
            },
        ),
        case("path_symlink_loop", &["m.gguf", "symbolic links"], |dir| {
            let p = dir.join("m.gguf");
            loop_at(&p);
            args(&["inspect", &s(&p)])
        }),
        case(
            "path_character_device",
            &["/dev/null", "not a regular file (a character device)"],
            |_| args(&["inspect", "/dev/null"]),
        ),
        // ---- texts ----
        case(
            "text_dev_zero",
            &["/dev/zero", "not a regular file (a character device)"],
            eval_text(|_| PathBuf::from("/dev/zero")),
        ),
        case(
            "text_fifo",
            &["t.fifo", "not a regular file (a FIFO)"],
            eval_text(|d| {
                let p = d.join("t.fifo");
                mkfifo(&p);
                p
            }),
        ),
        case(
            "text_a_directory",
            &["not a regular file (a directory)"],
            eval_text(|d| d.to_path_buf()),
        ),
        case(
            "text_missing",
            &["t-missing.txt", "no such file"],
            eval_text(|d| d.join("t-missing.txt")),
        ),
        case(
            "text_over_the_limit",
            &["big.txt", "more than the 256 MiB limit for a text"],
            eval_text(|d| {
                let p = d.join("big.txt");
                sparse_at(&p, 300 << 20);
                p
            }),
        ),
        case(
            "text_not_utf8",
            &["bad.txt", "not UTF-8"],
            eval_text(|d| {
                let p = d.join("bad.txt");
                std::fs::write(&p, b"ok \xff\xfe").unwrap();
                p
            }),
        ),
        case(
            "check_text_dev_zero",
            &["/dev/zero", "not a regular file"],
            sub("check", &["--text", "/dev/zero"]),
        ),
        // ---- arguments ----
        case(
            "arg_top_p_2",
            &["--top-p must lie in (0, 1], got 2"],
            generate(&["--top-p", "2"]),
        ),
        case(
            "arg_top_p_0",
            &["--top-p must lie in (0, 1], got 0"],
            generate(&["--top-p", "0"]),
        ),
        case(
            "arg_top_p_nan",
            &["--top-p", "got NaN"],
            generate(&["--top-p", "NaN"]),
        ),
        case(
            "arg_top_p_negative",
            &["--top-p", "got -0.5"],
            generate(&["--top-p", "-0.5"]),
        ),
        case(
            "arg_temperature_nan",
            &["--temperature", "got NaN"],
            generate(&["--temperature", "NaN"]),
        ),
        case(
            "arg_temperature_negative_with_a_space",
            &["--temperature must be a finite number >= 0", "got -1"],
            generate(&["--temperature", "-1"]),
        ),
        case(
            "arg_temperature_negative_with_equals",
            &["--temperature must be a finite number >= 0", "got -1"],
            generate(&["--temperature=-1"]),
        ),
        case(
            "arg_temperature_inf",
            &["--temperature", "got inf"],
            generate(&["--temperature", "inf"]),
        ),
        case(
            "arg_max_tokens_beyond_the_context",
            &["--max-tokens 100000", "context of 4096"],
            generate(&["--max-tokens", "100000"]),
        ),
        case(
            "arg_max_tokens_zero",
            &["--max-tokens", "at least 1"],
            generate(&["--max-tokens", "0"]),
        ),
        case(
            "arg_max_tokens_negative",
            &["--max-tokens", "-5"],
            generate(&["--max-tokens", "-5"]),
        ),
        case(
            "arg_prompt_longer_than_the_context",
            &["the prompt has", "context holds"],
            |dir| {
                let m = hf(dir);
                let long = "a".repeat(4200);
                args(&["generate", &s(&m), "--prompt", &long])
            },
        ),
        case(
            "arg_k_zero",
            &["--k", "at least 1"],
            eval(&["--mode", "zero", "--k", "0"]),
        ),
        case(
            "arg_k_negative",
            &["--k", "-1"],
            eval(&["--mode", "zero", "--k", "-1"]),
        ),
        case(
            "arg_k_beyond_d_ff",
            &["--k 100000", "1..=512"],
            eval(&["--mode", "zero", "--layer", "0", "--k", "100000"]),
        ),
        case(
            "arg_layer_past_the_last",
            &["--layer 5", "layers 0..1"],
            eval(&["--mode", "zero", "--layer", "5"]),
        ),
        case(
            "arg_layer_negative",
            &["--layer", "-1"],
            eval(&["--mode", "zero", "--layer", "-1"]),
        ),
        case(
            "arg_dims_past_d_ff",
            &["--dims 9999", "d_ff 512"],
            eval(&["--mode", "zero", "--layer", "0", "--dims", "3,9999"]),
        ),
        case(
            "arg_dims_twice",
            &["--dims names 3 twice"],
            eval(&["--mode", "zero", "--layer", "0", "--dims", "3,3"]),
        ),
        case(
            "arg_edit_past_the_last_layer",
            &["--edit 9:0,0", "layers 0..1"],
            eval(&["--edit", "9:0,0=0"]),
        ),
        case(
            "arg_window_zero",
            &["--window", "not 0"],
            eval(&["--window", "0"]),
        ),
        case(
            "arg_window_one",
            &["--window", "not 1"],
            eval(&["--window", "1"]),
        ),
        case(
            "arg_stride_zero",
            &["--stride", "not 0"],
            eval(&["--window", "8", "--stride", "0"]),
        ),
        case(
            "arg_stride_the_window",
            &["--stride", "not 8"],
            eval(&["--window", "8", "--stride", "8"]),
        ),
        case(
            "arg_min_abs_nan",
            &["--min-abs", "finite"],
            eval(&["--min-abs", "NaN"]),
        ),
        case(
            "arg_min_ratio_negative",
            &["--min-ratio", "got -1"],
            eval(&["--min-ratio", "-1"]),
        ),
        case(
            "arg_scan_k_zero",
            &["--k", "at least 1"],
            sub("scan", &["--k", "0"]),
        ),
        case(
            "arg_check_max_ratio_nan",
            &["--max-ratio", "got NaN"],
            sub("check", &["--max-ratio", "NaN"]),
        ),
        case(
            "arg_check_max_ratio_negative",
            &["--max-ratio", "got -2"],
            sub("check", &["--max-ratio", "-2"]),
        ),
        case(
            "arg_tasks_limit_zero",
            &["--limit", "at least 1"],
            sub("tasks", &["--limit", "0"]),
        ),
        case(
            "arg_tasks_batch_tokens_zero",
            &["--batch-tokens", "at least 1"],
            sub("tasks", &["--batch-tokens", "0"]),
        ),
        case(
            "arg_finetune_lr_nan",
            &["--lr", "finite number > 0"],
            sub("finetune", &["--data", "x", "--out", "y", "--lr", "NaN"]),
        ),
        case(
            "arg_finetune_warmup_beyond_one",
            &["--warmup", "[0, 1]"],
            sub("finetune", &["--data", "x", "--out", "y", "--warmup", "2"]),
        ),
        case(
            "arg_finetune_p0_negative",
            &["--p0", "[0, 1]"],
            sub(
                "finetune",
                &["--data", "x", "--out", "y", "--macdrop", "--p0", "-0.5"],
            ),
        ),
        case(
            "arg_bench_decode_zero",
            &["--decode", "at least 1"],
            sub("bench", &["--decode", "0"]),
        ),
        case(
            "arg_device_unknown",
            &["--device", "tpu"],
            generate(&["--device", "tpu"]),
        ),
        case(
            "adapter_missing_directory",
            &[
                "--adapter",
                "no-adapter",
                "adapter_config.json",
                "no such file",
            ],
            with_adapter(|d| d.join("no-adapter")),
        ),
        case(
            "adapter_config_invalid_json",
            &["--adapter", "adapter_config.json", "invalid JSON"],
            with_adapter(|d| {
                let a = d.join("adapter");
                std::fs::create_dir(&a).unwrap();
                std::fs::write(a.join("adapter_config.json"), "{ nope").unwrap();
                a
            }),
        ),
        case(
            "adapter_config_fifo",
            &["adapter_config.json", "a FIFO"],
            with_adapter(|d| {
                let a = d.join("adapter");
                std::fs::create_dir(&a).unwrap();
                mkfifo(&a.join("adapter_config.json"));
                a
            }),
        ),
        case(
            "finetune_data_fifo",
            &["data.jsonl", "not a regular file (a FIFO)"],
            |dir| {
                let g = write_gguf(dir, &gguf_bytes());
                let data = dir.join("data.jsonl");
                mkfifo(&data);
                args(&[
                    "finetune",
                    &s(&g),
                    "--data",
                    &s(&data),
                    "--out",
                    &s(&dir.join("adapter")),
                    "--device",
                    "cpu",
                ])
            },
        ),
        case(
            "tasks_requests_fifo",
            &["requests.jsonl", "not a regular file (a FIFO)"],
            |dir| {
                let g = write_gguf(dir, &gguf_bytes());
                let requests = dir.join("requests.jsonl");
                mkfifo(&requests);
                args(&[
                    "tasks",
                    &s(&g),
                    "--requests",
                    &s(&requests),
                    "--device",
                    "cpu",
                ])
            },
        ),
    ];
    v.push(Case {
        name: "convert_into_a_path_under_a_file",
        needles: &["blocker/out", "cannot create the output directory"],
        absent: &["mwtop-tmp"],
        build: Box::new(|dir| {
            let g = write_gguf(dir, &gguf_bytes());
            let blocker = dir.join("blocker");
            std::fs::write(&blocker, "a file").unwrap();
            args(&["convert", &s(&g), &s(&blocker.join("out"))])
        }),
    });
    v.push(Case {
        name: "convert_into_an_unwritable_place",
        needles: &["/proc/mwtop-out", "cannot create the output directory"],
        absent: &["mwtop-tmp"],
        build: Box::new(|dir| {
            let g = write_gguf(dir, &gguf_bytes());
            args(&["convert", &s(&g), "/proc/mwtop-out"])
        }),
    });
    v
}
