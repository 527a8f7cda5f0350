// Signs in with a test account and lands on the home screen.
const { test, expect } = require("appwright");

test("signs in with email and password", async ({ device }) => {
  await device.getByText("Sign in").tap();
  await device.getById("email").fill("qa@example.com");
  await device.getById("password").fill(process.env.QA_PASSWORD ?? "not-a-secret");
  await device.getByText("Continue").tap();
  await expect(device.getByText("Welcome back")).toBeVisible();
});
