"""AudioSet mood clips: selection from the published lists, download by YouTube id with yt-dlp."""
